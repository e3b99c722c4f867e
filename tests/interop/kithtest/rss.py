"""Measure a process's resident memory while something runs (Linux /proc)."""

from __future__ import annotations

import threading
import time


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRss:
    """Samples a process's RSS every `interval` seconds in a thread; `.peak` is the maximum."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.start_rss = rss_bytes(pid)
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class ZeroStream:
    """`size` bytes of a repeating pattern, read in blocks: a file-like body with a
    known length, so `requests` sends Content-Length and streams it."""

    def __init__(self, size: int, block: bytes = bytes(range(256)) * 4096):
        self.size, self.left, self.block = size, size, block

    def __len__(self):
        return self.size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = len(self.block) if n is None or n < 0 else min(n, len(self.block))
        n = min(n, self.left)
        self.left -= n
        return self.block[:n]
