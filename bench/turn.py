#!/usr/bin/env python3
"""Media relayed through kith's TURN relay: what a relayed call costs the server.

Starts `kith serve` (KITH_BIN, default the release build) with only its STUN/TURN
listener on loopback, pinned to core 0 (`taskset`), and two aioice endpoints
(aiortc's ICE library) on core 1: the caller restricted to relayed candidates, so
every datagram goes through kith. After ICE connects, each side sends RATE
datagrams of SIZE bytes a second for SECS seconds (an Opus voice frame is about
160 bytes at 50 a second; one call is 100 datagrams a second through the relay).
Prints what arrived, what was lost, and kith's CPU time per relayed datagram
(from /proc/<pid>/stat, both directions counted). `--server coturn` measures
Debian's coturn the same way (the same secret, loopback, one core).

    .venv/bin/python bench/turn.py [--rate 1000] [--secs 10] [--size 160] [--server kith|coturn]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aioice import Connection, TransportPolicy

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-of-some-length"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000, help="datagrams a second, each way")
    ap.add_argument("--secs", type=float, default=10)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--server", choices=["kith", "coturn"], default="kith")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/kith-target"))
    binary = os.environ.get("KITH_BIN", f"{target}/release/kith")
    port = free_udp_port()
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "kith.toml"
        config.write_text(
            f'[server]\ndata_dir = "{work}/data"\n'
            f'[listen]\nc2s = ""\nc2s_tls = ""\nhttp = ""\nhttps = ""\nstun = "127.0.0.1:{port}"\n'
            f'[calls]\nturn_secret = "{SECRET}"\nrelay_allow_private = true\n'
            '[log]\nlevel = "warn"\n'
        )
        if args.server == "kith":
            command = [binary, "serve", "-c", str(config)]
        else:
            command = ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
                       "--relay-ip=127.0.0.1", "--use-auth-secret", f"--static-auth-secret={SECRET}",
                       "--realm=localhost", "--no-tls", "--no-dtls", "--no-cli",
                       f"--pidfile={work}/turnserver.pid", "--log-file=stdout", "--simple-log",
                       "--no-stdout-log"]
        server = subprocess.Popen(["taskset", "-c", "0", *command], stdout=subprocess.DEVNULL)
        os.sched_setaffinity(0, {1})
        try:
            await asyncio.sleep(1.5)
            username = f"{int(time.time()) + 3600}:bench@localhost"
            password = base64.b64encode(
                hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
            caller = Connection(ice_controlling=True, turn_server=("127.0.0.1", port),
                                turn_username=username, turn_password=password,
                                transport_policy=TransportPolicy.RELAY, use_ipv6=False)
            callee = Connection(ice_controlling=False, use_ipv6=False)
            await asyncio.gather(caller.gather_candidates(), callee.gather_candidates())
            for one, other in ((caller, callee), (callee, caller)):
                for candidate in one.local_candidates:
                    await other.add_remote_candidate(candidate)
                await other.add_remote_candidate(None)
                other.remote_username, other.remote_password = one.local_username, one.local_password
            await asyncio.wait_for(asyncio.gather(caller.connect(), callee.connect()), 30)
            received = {"caller": 0, "callee": 0}

            async def receive(conn: Connection, name: str) -> None:
                while True:
                    await conn.recv()
                    received[name] += 1

            receivers = [asyncio.create_task(receive(caller, "caller")),
                         asyncio.create_task(receive(callee, "callee"))]
            payload = os.urandom(args.size)
            total = int(args.rate * args.secs)
            before = cpu_ticks(server.pid)
            start = time.monotonic()
            for n in range(total):
                await caller.send(payload)
                await callee.send(payload)
                # Paced: the n-th pair leaves at n / rate seconds.
                delay = start + (n + 1) / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent_secs = time.monotonic() - start
            await asyncio.sleep(1.0)
            after = cpu_ticks(server.pid)
            for task in receivers:
                task.cancel()
            relayed = received["caller"] + received["callee"]
            ticks = after - before
            hz = os.sysconf("SC_CLK_TCK")
            print(f"sent {2 * total} datagrams of {args.size} bytes in {sent_secs:.1f} s "
                  f"({2 * total / sent_secs:,.0f}/s), relayed {relayed:,} "
                  f"(lost {2 * total - relayed:,})")
            print(f"{args.server} CPU: {ticks / hz:.2f} s = {ticks / hz * 1e6 / max(relayed, 1):.1f} µs "
                  f"per relayed datagram ({ticks / hz / sent_secs * 100:.0f} % of a core)")
            await asyncio.gather(caller.close(), callee.close())
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
