"""XEP-0363 HTTP File Upload on both blob backends (a local directory and a real
S3-compatible server, moto_server), on SQLite and PostgreSQL.

Slots are requested with slixmpp's xep_0363 plugin; files are PUT and fetched
over HTTPS with `requests`. Covers §3 discovery, §4 limits and errors, §5 PUT
rules, RFC 7233 ranges, ETag, HEAD, CORS, the safety headers, thumbnails and
BlurHash, voice-note duration, documents, expiry and deletion with the account.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import ssl
import time
import urllib.parse

import pytest
import pytest_asyncio
from PIL import Image
from slixmpp import JID
from slixmpp.exceptions import IqError

from kithtest.media import (
    NS_UPLOAD, UPLOAD_PLUGINS_EXTRA, MotoS3, image_bytes, https, ogg_opus, pdf_bytes, put,
    request_slot, stored_objects, upload, upload_overrides, wait_meta,
)
from kithtest.rss import PeakRss, ZeroStream
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool, iq_error_condition

PLUGINS = DEFAULT_PLUGINS + UPLOAD_PLUGINS_EXTRA + ("xep_0077",)
MiB = 1024 * 1024
MAX = 20 * MiB
QUOTA = 40 * MiB
ALLOWED = ["image/*", "audio/*", "video/*", "application/pdf", "application/zip",
           "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
           "application/octet-stream", "text/html", "text/plain"]


@pytest.fixture(scope="module", params=["fs", "s3"])
def blob(request):
    return request.param


@pytest.fixture(scope="module")
def s3(blob, tmp_path_factory):
    if blob != "s3":
        yield None
        return
    moto = MotoS3(tmp_path_factory.mktemp("moto"))
    yield moto
    moto.stop()


@pytest.fixture(scope="module")
def media_server(backend, blob, s3, server_factory):
    srv = server_factory.start(
        f"upload-{blob}", backend,
        upload_overrides(blob, s3, max_file_size=MAX, quota_per_user=QUOTA, allowed_types=ALLOWED))
    yield srv
    server_factory.stop(srv)


@pytest_asyncio.fixture
async def pool(media_server):
    p = ClientPool(media_server)
    yield p
    await p.close_all()


@pytest.fixture
def web(media_server):
    return https(media_server)


async def client(pool):
    acct = await pool.account("up")
    return acct, await pool.connect(acct, plugins=PLUGINS)


# ---- §3 discovery ------------------------------------------------------------------

async def test_service_is_discovered_with_its_max_file_size(pool):
    _, c = await client(pool)
    info = await c.plugin["xep_0363"].find_upload_service(timeout=10)
    assert info is not None, "no upload service among the server's disco items"
    assert info["from"] == JID("upload.localhost")
    assert ("store", "file", None, "HTTP File Upload") in info["disco_info"]["identities"]
    form = info["disco_info"].xml.find("{jabber:x:data}x")
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in form}
    assert fields["FORM_TYPE"] == NS_UPLOAD
    assert int(fields["max-file-size"]) == MAX


# ---- upload, download, HTTP semantics ----------------------------------------------------

async def test_upload_and_download_are_byte_identical(pool, web, media_server, s3):
    _, c = await client(pool)
    data = os.urandom(9 * MiB + 123)  # more than one 8 MiB multipart part
    slot = await request_slot(c, "clip.mp4", len(data), "video/mp4")
    assert slot.put_url == slot.get_url
    assert slot.get_url.startswith(f"https://localhost:{media_server.https_port}/upload/")
    assert list(slot.headers) == ["Authorization"]
    slot_id = urllib.parse.urlsplit(slot.get_url).path.split("/")[2]
    assert len(slot_id) >= 22, "at least 128 bits of randomness in the URL"
    assert web.get(slot.get_url, timeout=10).status_code == 404, "nothing served before the PUT"

    r = await asyncio.to_thread(put, web, slot, data, "video/mp4")
    assert r.status_code == 201, r.text
    got = await asyncio.to_thread(web.get, slot.get_url, timeout=60)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["Content-Type"] == "video/mp4"
    assert int(got.headers["Content-Length"]) == len(data)
    assert got.headers["Accept-Ranges"] == "bytes"
    assert got.headers["Content-Disposition"].startswith("inline;")
    assert slot_id in stored_objects(media_server, s3)
    etag = got.headers["ETag"]

    head = web.head(slot.get_url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["ETag"] == etag

    again = web.get(slot.get_url, headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b""

    # RFC 7233: single ranges, suffix, open-ended, unsatisfiable
    r = web.get(slot.get_url, headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert r.status_code == 206
    assert r.content == data[1000:2000]
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    r = web.get(slot.get_url, headers={"Range": "bytes=-100"}, timeout=10)
    assert r.status_code == 206 and r.content == data[-100:]
    r = web.get(slot.get_url, headers={"Range": f"bytes={len(data) - 10}-"}, timeout=10)
    assert r.status_code == 206 and r.content == data[-10:]
    r = web.get(slot.get_url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"

    # CORS: a web client on another origin may PUT and read
    pre = web.options(slot.put_url, headers={
        "Origin": "https://web.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type"}, timeout=10)
    assert pre.status_code in (200, 204)
    assert "PUT" in pre.headers["Access-Control-Allow-Methods"]
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    assert got.headers["Access-Control-Allow-Origin"] == "*"


# ---- §4 limits -------------------------------------------------------------------------

async def test_slot_requests_over_the_limits_are_refused(pool):
    _, c = await client(pool)
    with pytest.raises(IqError) as err:
        await request_slot(c, "big.bin", MAX + 1, "application/octet-stream")
    assert iq_error_condition(err.value) == "not-acceptable"
    error = err.value.iq.xml.find("{jabber:client}error")
    assert error.get("type") == "modify"
    assert error.findtext(f"{{{NS_UPLOAD}}}file-too-large/{{{NS_UPLOAD}}}max-file-size") == str(MAX)

    with pytest.raises(IqError) as err:
        await request_slot(c, "setup.exe", 100, "application/x-msdownload")
    assert iq_error_condition(err.value) == "not-acceptable"

    # the quota counts slots handed out, so two 15 MiB slots fit and a third does not
    await request_slot(c, "a.bin", 15 * MiB, "application/octet-stream")
    await request_slot(c, "b.bin", 15 * MiB, "application/octet-stream")
    with pytest.raises(IqError) as err:
        await request_slot(c, "c.bin", 15 * MiB, "application/octet-stream")
    assert iq_error_condition(err.value) == "resource-constraint"
    assert err.value.iq.xml.find("{jabber:client}error").get("type") == "wait"


# ---- §5 PUT rules --------------------------------------------------------------------

async def test_put_needs_the_token_and_the_exact_size_and_type(pool, web):
    _, c = await client(pool)
    data = b"hello, world\n" * 100
    slot = await request_slot(c, "note.txt", len(data), "text/plain")
    wrong = put(web, slot, data, "text/plain", {"Authorization": "Bearer " + "A" * 43})
    assert wrong.status_code == 403
    assert put(web, slot, data, "text/plain", {"Authorization": ""}).status_code == 403
    assert put(web, slot, data, "text/html").status_code == 415
    assert put(web, slot, data + b"x", "text/plain").status_code == 413
    assert put(web, slot, data[:-1], "text/plain").status_code == 400
    # refused PUTs before the body is taken leave the slot usable
    assert put(web, slot, data, "text/plain").status_code == 201
    assert put(web, slot, data, "text/plain").status_code == 409, "one PUT per slot"
    assert web.get(slot.get_url, timeout=10).content == data


async def test_a_dropped_upload_leaves_nothing_served(pool, web, media_server, s3):
    _, c = await client(pool)
    size = 3 * MiB
    slot = await request_slot(c, "cut.bin", size, "application/octet-stream")
    url = urllib.parse.urlsplit(slot.put_url)
    ctx = ssl.create_default_context(cafile=str(media_server.ca_path))
    with socket.create_connection((url.hostname, url.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=url.hostname) as tls:
            tls.sendall((f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                         f"Authorization: {slot.headers['Authorization']}\r\n"
                         f"Content-Type: application/octet-stream\r\n"
                         f"Content-Length: {size}\r\n\r\n").encode())
            tls.sendall(os.urandom(size // 2))
    slot_id = url.path.split("/")[2]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if slot_id not in stored_objects(media_server, s3):
            break
        await asyncio.sleep(0.2)
    assert web.get(slot.get_url, timeout=10).status_code == 404
    assert slot_id not in stored_objects(media_server, s3)
    # the slot is spent: a retry needs a new one. The server removes the partial
    # object first and the slot's record right after; until then a retry is
    # refused as a slot in use (409), then as no slot at all (404).
    while True:
        retry = put(web, slot, b"x", "application/octet-stream").status_code
        if retry != 409 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert retry == 404


# ---- safety ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kind,body", [
    ("page.html", "text/html", b"<html><script>alert(document.cookie)</script></html>"),
    ("logo.svg", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"),
])
async def test_active_content_is_only_ever_an_attachment(pool, web, media_server, name, kind, body):
    _, c = await client(pool)
    # ALLOWED admits both types (text/html, image/*), so each upload must succeed.
    slot = await upload(c, web, name, body, kind)
    r = web.get(slot.get_url, timeout=10)
    assert r.status_code == 200 and r.content == body
    assert r.headers["Content-Disposition"].startswith("attachment;")
    assert f'filename="{name}"' in r.headers["Content-Disposition"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp


# ---- thumbnails and metadata ----------------------------------------------------------

@pytest.mark.parametrize("fmt,kind", [
    ("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
])
async def test_images_get_a_thumbnail_and_a_blurhash(pool, web, fmt, kind):
    _, c = await client(pool)
    data = image_bytes(fmt, (800, 600))
    slot = await upload(c, web, f"photo.{fmt.lower()}", data, kind)
    meta = await asyncio.to_thread(wait_meta, web, slot.get_url)
    assert meta["status"] == "ready"
    assert (meta["width"], meta["height"]) == (800, 600)
    assert meta["size"] == len(data) and meta["content_type"] == kind
    assert len(meta["blurhash"]) == 28  # 4×3 components
    thumb = meta["thumbnail"]
    assert thumb["url"] == slot.get_url + "?thumb"
    assert (thumb["width"], thumb["height"]) == (320, 240)
    r = web.get(thumb["url"], timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert len(r.content) == thumb["size"]
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and img.size == (320, 240)
    assert web.get(slot.get_url, timeout=10).content == data


async def test_a_corrupt_image_uploads_without_a_thumbnail(pool, web):
    _, c = await client(pool)
    data = b"\xff\xd8\xff\xe0" + os.urandom(5000)
    slot = await upload(c, web, "broken.jpg", data, "image/jpeg")
    meta = await asyncio.to_thread(wait_meta, web, slot.get_url)
    assert meta["status"] == "ready" and "thumbnail" not in meta
    assert web.get(slot.get_url + "?thumb", timeout=10).status_code == 404
    assert web.get(slot.get_url, timeout=10).content == data


async def test_voice_notes_and_documents(pool, web):
    _, c = await client(pool)
    voice = ogg_opus(3.5)
    slot = await upload(c, web, "voice.opus", voice, "audio/ogg")
    meta = await asyncio.to_thread(wait_meta, web, slot.get_url)
    assert meta["duration_secs"] == pytest.approx(3.5, abs=0.01)
    r = web.get(slot.get_url, timeout=10)
    assert r.content == voice and r.headers["Content-Type"] == "audio/ogg"
    assert r.headers["Content-Disposition"].startswith("inline;")

    aac = os.urandom(20_000)
    slot = await upload(c, web, "voice.m4a", aac, "audio/mp4")
    assert web.get(slot.get_url, timeout=10).content == aac

    pdf = pdf_bytes()
    slot = await upload(c, web, "Rechnung März.pdf", pdf, "application/pdf")
    r = web.get(slot.get_url, timeout=10)
    assert r.content == pdf and r.headers["Content-Type"] == "application/pdf"
    assert "filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf" in r.headers["Content-Disposition"]
    meta = await asyncio.to_thread(wait_meta, web, slot.get_url)
    assert (meta["name"], meta["size"]) == ("Rechnung März.pdf", len(pdf))

    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    slot = await upload(c, web, "../../report.docx", b"PK\x03\x04" + os.urandom(3000), docx)
    assert slot.get_url.endswith("/report.docx"), "no path traversal through the name"
    r = web.get(slot.get_url, timeout=10)
    assert r.headers["Content-Type"] == docx
    assert r.headers["Content-Disposition"].startswith('attachment; filename="report.docx"')


# ---- lifecycle -------------------------------------------------------------------------

async def test_files_are_deleted_with_the_account(pool, web, media_server, s3):
    acct, c = await client(pool)
    slot = await upload(c, web, "mine.png", image_bytes("PNG", (64, 64)), "image/png")
    await asyncio.to_thread(wait_meta, web, slot.get_url)
    slot_id = urllib.parse.urlsplit(slot.get_url).path.split("/")[2]
    assert any(k.startswith(slot_id) for k in stored_objects(media_server, s3))
    await c.close()
    await asyncio.to_thread(media_server.cli, "user", "del", acct.name)
    assert web.get(slot.get_url, timeout=10).status_code == 404
    assert not any(k.startswith(slot_id) for k in stored_objects(media_server, s3))

    # in-band removal (XEP-0077 §3.2) too
    acct, c = await client(pool)
    slot = await upload(c, web, "also.txt", b"bye", "text/plain")
    slot_id = urllib.parse.urlsplit(slot.get_url).path.split("/")[2]
    iq = c.Iq()
    iq["type"] = "set"
    iq["register"]["remove"] = True
    await iq.send(timeout=10)
    deadline = time.monotonic() + 10
    while web.get(slot.get_url, timeout=10).status_code != 404 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert web.get(slot.get_url, timeout=10).status_code == 404
    assert slot_id not in stored_objects(media_server, s3)


async def test_expired_files_and_slots_are_swept(backend, blob, s3, server_factory):
    srv = server_factory.start(
        f"upload-expiry-{blob}", backend,
        upload_overrides(blob, s3, expire_after_secs=2, slot_expiry_secs=2, sweep_interval_secs=1))
    p = ClientPool(srv)
    try:
        web = https(srv)
        acct = await p.account("exp")
        c = await p.connect(acct, plugins=PLUGINS)
        slot = await upload(c, web, "soon.txt", b"gone soon", "text/plain")
        unused = await request_slot(c, "never.txt", 5, "text/plain")
        assert web.get(slot.get_url, timeout=10).content == b"gone soon"
        slot_id = urllib.parse.urlsplit(slot.get_url).path.split("/")[2]
        await asyncio.sleep(4)
        assert web.get(slot.get_url, timeout=10).status_code == 404
        assert put(web, unused, b"hello", "text/plain").status_code == 404
        assert slot_id not in stored_objects(srv, s3), "the sweep deleted the blob"
    finally:
        await p.close_all()
        server_factory.stop(srv)


# ---- streaming: memory stays bounded -------------------------------------------------

async def test_a_large_upload_and_download_use_bounded_memory(blob, backend, server_factory):
    """200 MiB up and down through the fs backend: the server's RSS grows by far
    less than the file (multipart parts of 8 MiB, two in flight; GET streams)."""
    if blob != "fs":
        pytest.skip("measured on the fs backend (moto_server holds S3 objects in memory)")
    size = 200 * MiB
    srv = server_factory.start(f"upload-rss-{backend}", backend,
                               upload_overrides("fs", None, max_file_size=size))
    p = ClientPool(srv)
    try:
        web = https(srv)
        c = await p.connect(await p.account("rss"), plugins=PLUGINS)
        slot = await request_slot(c, "big.bin", size, "application/octet-stream")
        with PeakRss(srv.proc.pid) as up:
            r = await asyncio.to_thread(put, web, slot, ZeroStream(size), "application/octet-stream")
        assert r.status_code == 201, r.text

        def download():
            got = 0
            with web.get(slot.get_url, stream=True, timeout=60) as resp:
                assert resp.status_code == 200
                for chunk in resp.iter_content(1 << 20):
                    got += len(chunk)
            return got

        with PeakRss(srv.proc.pid) as down:
            assert await asyncio.to_thread(download) == size
        for name, m in (("upload", up), ("download", down)):
            growth = m.peak - m.start_rss
            assert growth < 80 * MiB, f"{name}: RSS grew by {growth / MiB:.0f} MiB"
    finally:
        await p.close_all()
        server_factory.stop(srv)
