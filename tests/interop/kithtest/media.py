"""Helpers for the media tests: a real S3-compatible server (moto_server) on
loopback, upload configuration for either blob backend, XEP-0363 slots through
slixmpp's xep_0363 plugin, plain HTTPS with `requests`, and test files (images
made with Pillow, a hand-built Ogg Opus voice note, a PDF).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import requests
from PIL import Image
from slixmpp import JID

from kithtest.server import free_port, wait_port

NS_UPLOAD = "urn:xmpp:http:upload:0"
UPLOAD_PLUGINS_EXTRA = ("xep_0128", "xep_0363")


class MotoS3:
    """`moto_server` (moto[server] from PyPI) on a free loopback port, with one bucket."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = "kith-" + secrets.token_hex(4)
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        self.log = open(Path(workdir) / "moto.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        if not wait_port(self.port, 30, self.proc):
            self.stop()
            raise RuntimeError("moto_server did not start")
        # object_store cannot create buckets: a plain S3 CreateBucket PUT.
        r = requests.put(f"{self.url}/{self.bucket}", timeout=10)
        r.raise_for_status()

    def objects(self) -> list[str]:
        r = requests.get(f"{self.url}/{self.bucket}?list-type=2", timeout=10)
        r.raise_for_status()
        root = ET.fromstring(r.content)
        return [el.text for el in root.iter() if el.tag.endswith("}Key")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def upload_overrides(blob: str, s3: MotoS3 | None, **settings) -> dict:
    """`[upload]` settings for the fs or s3 backend, plus `settings`."""
    section = {"backend": blob}
    if blob == "s3":
        assert s3 is not None
        section.update({
            "s3_endpoint": s3.url,
            "s3_bucket": s3.bucket,
            "s3_region": "us-east-1",
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
            "s3_path_style": True,
            "s3_allow_http": True,
        })
    section.update(settings)
    return {"upload": section}


def stored_objects(server, s3: MotoS3 | None) -> list[str]:
    """The keys the blob store holds, whichever backend."""
    if s3 is not None:
        return s3.objects()
    root = server.data_dir / "uploads"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def https(server) -> requests.Session:
    s = requests.Session()
    # Not trust_env: REQUESTS_CA_BUNDLE would replace the test CA.
    s.trust_env = False
    s.verify = str(server.ca_path)
    return s


class Slot:
    def __init__(self, iq):
        slot = iq.xml.find(f"{{{NS_UPLOAD}}}slot")
        assert slot is not None, f"no <slot/> in {iq}"
        put = slot.find(f"{{{NS_UPLOAD}}}put")
        self.put_url = put.get("url")
        self.headers = {h.get("name"): h.text or "" for h in put.findall(f"{{{NS_UPLOAD}}}header")}
        self.get_url = slot.find(f"{{{NS_UPLOAD}}}get").get("url")


async def request_slot(client, filename: str, size: int, content_type: str,
                       service: str = "upload.localhost") -> Slot:
    iq = await client.plugin["xep_0363"].request_slot(
        JID(service), filename, size, content_type, timeout=10)
    return Slot(iq)


def put(session: requests.Session, slot: Slot, data: bytes, content_type: str,
        headers: dict | None = None) -> requests.Response:
    h = dict(slot.headers)
    h["Content-Type"] = content_type
    # A refused PUT is answered before its body is read, and the server then
    # closes the connection: don't let the next request reuse it.
    h["Connection"] = "close"
    h.update(headers or {})
    return session.put(slot.put_url, data=data, headers=h, timeout=60)


async def upload(client, session, filename: str, data: bytes, content_type: str) -> Slot:
    slot = await request_slot(client, filename, len(data), content_type)
    r = put(session, slot, data, content_type)
    assert r.status_code == 201, (r.status_code, r.text)
    return slot


def wait_meta(session: requests.Session, url: str, timeout: float = 30) -> dict:
    """GET `<url>?meta` until the server has processed the file."""
    deadline = time.monotonic() + timeout
    while True:
        r = session.get(url + "?meta", timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        doc = r.json()
        if doc["status"] == "ready" or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


# ---- test files --------------------------------------------------------------

def image_bytes(fmt: str, size=(800, 600)) -> bytes:
    img = Image.new("RGB", size)
    px = img.load()
    for x in range(0, size[0], 4):
        for y in range(0, size[1], 4):
            px[x, y] = (x % 256, y % 256, (x * y) % 256)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _ogg_page(granule: int, serial: int, seq: int, payload: bytes, header_type: int = 0) -> bytes:
    segments = []
    rest = len(payload)
    while rest >= 255:
        segments.append(255)
        rest -= 255
    segments.append(rest)
    header = b"OggS" + bytes([0, header_type]) + struct.pack("<qII", granule, serial, seq)
    header += b"\0\0\0\0" + bytes([len(segments)]) + bytes(segments)
    return header + payload


def ogg_opus(seconds: float, pre_skip: int = 312) -> bytes:
    """An Ogg Opus stream (RFC 7845 framing): OpusHead, OpusTags, then audio
    pages whose last granule position is `seconds` at 48 kHz plus the pre-skip."""
    serial = 0x4B495448
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", pre_skip, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"kith" + struct.pack("<I", 0)
    out = _ogg_page(0, serial, 0, head, 2) + _ogg_page(0, serial, 1, tags)
    total = int(seconds * 48000)
    seq, done = 2, 0
    while done < total:
        done = min(total, done + 48000)
        out += _ogg_page(done + pre_skip, serial, seq, os.urandom(200), 4 if done == total else 0)
        seq += 1
    return out


def pdf_bytes() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
