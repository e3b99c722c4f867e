"""Upload benchmark (issue 6): throughput of a 100 MiB file on the fs backend,
server RSS during a 1 GiB upload and download, thumbnails per second.

    CARGO_TARGET_DIR=... .venv/bin/python bench/media.py [--release]

Starts its own `kith serve` (the binary from $KITH_BIN or the debug build) with
the local-directory backend, in a temporary directory.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from kithtest.media import (UPLOAD_PLUGINS_EXTRA, https, image_bytes, put,  # noqa: E402
                            request_slot, upload, upload_overrides, wait_meta)
from kithtest.rss import PeakRss, ZeroStream  # noqa: E402
from kithtest.server import KithServer  # noqa: E402
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool  # noqa: E402

MiB = 1024 * 1024
PLUGINS = DEFAULT_PLUGINS + UPLOAD_PLUGINS_EXTRA


def download(web, url: str) -> int:
    got = 0
    with web.get(url, stream=True, timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            got += len(chunk)
    return got


async def transfer(c, web, pid: int, size: int) -> dict:
    slot = await request_slot(c, "big.bin", size, "application/octet-stream")
    with PeakRss(pid) as up:
        t0 = time.monotonic()
        r = await asyncio.to_thread(put, web, slot, ZeroStream(size), "application/octet-stream")
        t_up = time.monotonic() - t0
    assert r.status_code == 201, r.text
    with PeakRss(pid) as down:
        t0 = time.monotonic()
        assert await asyncio.to_thread(download, web, slot.get_url) == size
        t_down = time.monotonic() - t0
    return {
        "size_mib": size // MiB,
        "up_mib_s": size / MiB / t_up,
        "down_mib_s": size / MiB / t_down,
        "rss_start_mib": up.start_rss / MiB,
        "rss_peak_up_mib": up.peak / MiB,
        "rss_peak_down_mib": down.peak / MiB,
    }


async def thumbnails(c, web, n: int = 12) -> float:
    photo = image_bytes("JPEG", (4000, 3000))  # 12 MP
    slots = [await upload(c, web, f"p{i}.jpg", photo, "image/jpeg") for i in range(n)]
    t0 = time.monotonic()
    for s in slots:
        meta = await asyncio.to_thread(wait_meta, web, s.get_url, 300)
        assert "thumbnail" in meta, meta
    return n / (time.monotonic() - t0)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        srv = KithServer(Path(tmp), "sqlite", upload_overrides(
            "fs", None, max_file_size=2048 * MiB, quota_per_user=8192 * MiB), name="bench")
        srv.start()
        pool = ClientPool(srv)
        try:
            web = https(srv)
            c = await pool.connect(await pool.account("bench"), plugins=PLUGINS)
            for size in (100 * MiB, 1024 * MiB):
                print(await transfer(c, web, srv.proc.pid, size), flush=True)
            print({"thumbnails_per_s_12mp_jpeg": await thumbnails(c, web)}, flush=True)
        finally:
            await pool.close_all()
            srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
