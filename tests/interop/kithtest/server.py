"""Start and stop a real `kith serve` process for the interop tests.

Nothing here talks XMPP: this module only knows the contract of the binary
(config file, CLI for accounts, readiness = the c2s port accepts TCP).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

DOMAIN = "localhost"
READY_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "kith-target")


def kith_bin() -> Path:
    env = os.environ.get("KITH_BIN")
    if env:
        return Path(env)
    return target_dir() / "debug" / "kith"


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on, for a server started later.

    Picked below the kernel's ephemeral range: a port from `bind(0)` lies inside it,
    and any outgoing connection made before the server starts (the tests make many)
    may take it, after which the server fails with "address in use". Ports handed out
    are not handed out again by this process.
    """
    lo, _ = _ephemeral_range()
    first = 10000 if lo > 12000 else 1024
    for _ in range(200):
        port = secrets.randbelow(lo - first) + first
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    """A loopback UDP port nobody uses, from the same range as `free_port`."""
    for _ in range(200):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if port_open(port):
            return True
        time.sleep(0.1)
    return False


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in config.items():
        out.append(f"[{section}]")
        for k, v in values.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


def deep_merge(base: dict, extra: dict) -> dict:
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in (extra or {}).items():
        if isinstance(v, dict):
            result.setdefault(k, {})
            result[k].update(v)
        else:
            result[k] = v
    return result


class PostgresAdmin:
    """Creates one fresh database per server start, via the `psql` CLI."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.psql = shutil.which("psql")
        if not self.psql:
            raise RuntimeError("KITH_TEST_PG_URL is set but `psql` is not installed")

    def _psql(self, sql: str) -> None:
        res = subprocess.run(
            [self.psql, self.admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed ({sql}): {res.stderr.strip()}")

    def create_database(self) -> tuple[str, str]:
        name = "kith_test_" + secrets.token_hex(6)
        self._psql(f"CREATE DATABASE {name}")
        parts = urllib.parse.urlsplit(self.admin_url)
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        return name, url

    def drop_database(self, name: str) -> None:
        try:
            self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception as exc:  # cleanup only
            print(f"warning: could not drop {name}: {exc}")


class KithServer:
    """One `kith serve` process with its own config, data dir and ports."""

    def __init__(self, workdir: Path, backend: str, overrides: dict | None = None, name: str = "kith"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.name = name
        self.bin = kith_bin()
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "kith.toml"
        self.log_path = self.workdir / "server.log"
        self.domain = DOMAIN
        self.host = "127.0.0.1"
        self.c2s_port = free_port()
        self.c2s_tls_port = free_port()
        self.http_port = free_port()
        self.https_port = free_port()
        self.stun_port = free_udp_port()
        self.proc: subprocess.Popen | None = None
        self.pg: PostgresAdmin | None = None
        self.pg_db: str | None = None
        self.exit_code: int | None = None
        config = {
            "server": {"domain": self.domain, "data_dir": str(self.data_dir)},
            "listen": {
                "c2s": f"{self.host}:{self.c2s_port}",
                "c2s_tls": f"{self.host}:{self.c2s_tls_port}",
                "http": f"{self.host}:{self.http_port}",
                "https": f"{self.host}:{self.https_port}",
                "stun": f"{self.host}:{self.stun_port}",
            },
            "registration": {"enabled": True, "max_per_ip_per_hour": 1000},
            "limits": {"max_stanza_size": 262144, "auth_timeout_secs": 30, "max_auth_failures": 5},
        }
        if backend == "postgres":
            admin = os.environ.get("KITH_TEST_PG_URL")
            if not admin:
                raise RuntimeError("postgres backend requested but KITH_TEST_PG_URL is unset")
            self.pg = PostgresAdmin(admin)
            self.pg_db, url = self.pg.create_database()
            config["storage"] = {"url": url}
        elif backend != "sqlite":
            raise ValueError(backend)
        self.config = deep_merge(config, overrides or {})
        self.config_path.write_text(to_toml(self.config))

    # ---- paths and addresses -------------------------------------------
    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.http_port}/xmpp-websocket"

    @property
    def wss_url(self) -> str:
        # 'localhost' so that the certificate's DNS name is what gets verified
        return f"wss://localhost:{self.https_port}/xmpp-websocket"

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    # ---- process lifecycle ---------------------------------------------
    def start(self) -> None:
        if not self.bin.exists():
            raise RuntimeError(
                f"kith binary not found at {self.bin}; build it with "
                f"`cargo build -p kith` or set KITH_BIN"
            )
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        # Panics keep their backtrace; a startup error (anyhow) stays one readable line
        # at the end of the log instead of being pushed out of the tail by a backtrace.
        env.setdefault("RUST_LIB_BACKTRACE", "0")
        env.setdefault("NO_COLOR", "1")  # plain log lines in server.log
        self.proc = subprocess.Popen(
            [str(self.bin), "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        if not wait_port(self.c2s_port, READY_TIMEOUT, self.proc):
            code = self.proc.poll()
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(
                f"kith serve did not accept connections on c2s port {self.c2s_port} within "
                f"{READY_TIMEOUT}s (exit code {code}).\n--- server log tail ---\n{tail}"
            )
        # Every listener is bound before the server serves, but one after
        # another: a test connecting to another port the instant c2s opens
        # could find it not yet bound (seen once for `c2s_plain`).
        for name, address in self.config.get("listen", {}).items():
            # STUN is UDP: bound before c2s serves, nothing to connect to.
            if name in ("c2s", "stun") or not isinstance(address, str) or ":" not in address:
                continue
            host, _, port = address.rpartition(":")
            if host in ("127.0.0.1", "localhost") and port.isdigit() and int(port) > 0:
                if not wait_port(int(port), READY_TIMEOUT, self.proc):
                    tail = self.log_tail()
                    self.stop()
                    raise RuntimeError(f"kith serve did not listen on {name} {address}\n{tail}")
        # The CA certificate is the trust anchor of every TLS check below.
        deadline = time.monotonic() + 5
        while not self.ca_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.ca_path.exists():
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"server is up but {self.ca_path} does not exist\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.exit_code = self.proc.returncode
        self.proc = None
        try:
            self._log.close()
        except Exception:
            pass
        return self.exit_code

    def cleanup(self) -> None:
        if self.pg and self.pg_db:
            self.pg.drop_database(self.pg_db)
            self.pg_db = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no server log)"
        text = data.decode("utf-8", "replace").splitlines()
        return "\n".join(ln if len(ln) <= 400 else ln[:400] + f"... [{len(ln)} chars]" for ln in text[-lines:])

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    # ---- admin CLI ---------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        cmd = [str(self.bin), *args, "--config", str(self.config_path)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(
                f"`{' '.join(cmd)}` exited {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def add_user(self, name: str, password: str) -> str:
        self.cli("user", "add", name, "--password", password)
        return self.jid(name)

    async def aadd_user(self, name: str, password: str) -> str:
        return await asyncio.to_thread(self.add_user, name, password)
