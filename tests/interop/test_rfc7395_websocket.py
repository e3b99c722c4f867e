"""RFC 7395 (XMPP over WebSocket) with the third-party @xmpp/client, and
XEP-0156 discovery (host-meta / host-meta.json)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import ssl
import subprocess
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kithtest.raw import NS_SASL, NS_STREAM, NS_STREAMS_ERR, NS_TLS, tls_context
from kithtest.server import wait_port
from kithtest.ws import WebSocket, WsClosed

WS_DIR = Path(__file__).resolve().parent / "ws"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_WS = "urn:xmpp:alt-connections:websocket"


@pytest.fixture
def http_up(server):
    assert wait_port(server.http_port, 10), f"nothing listens on the http port {server.http_port}"
    assert wait_port(server.https_port, 10), f"nothing listens on the https port {server.https_port}"
    return server


def node_command() -> list[str]:
    node = shutil.which("node")
    if not node:
        pytest.fail("node is not installed (Node 20+ is needed for the WebSocket interop tests)")
    if not (WS_DIR / "node_modules" / "@xmpp" / "client").exists():
        pytest.fail(f"@xmpp/client is not installed: run `npm ci` in {WS_DIR}")
    major = int(subprocess.check_output([node, "--version"], text=True).strip().lstrip("v").split(".")[0])
    # Node 20 has the WHATWG WebSocket that @xmpp/websocket uses behind a flag.
    return [node, "--experimental-websocket"] if major < 22 else [node]


async def run_xmpp_js(server, service: str, cfg: dict, timeout: float = 30.0) -> dict:
    cmd = node_command() + ["client.mjs", json.dumps({**cfg, "service": service, "domain": server.domain,
                                                       "timeout_ms": int(timeout * 1000)})]
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(server.ca_path))
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=WS_DIR, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 15)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the @xmpp/client driver did not exit in time")
    lines = [ln for ln in out.decode().splitlines() if ln.strip().startswith("{")]
    if not lines:
        pytest.fail(f"no JSON from the @xmpp/client driver (exit {proc.returncode}); stderr:\n{err.decode()[-3000:]}")
    result = json.loads(lines[-1])
    result["exit_code"] = proc.returncode
    result["stderr"] = err.decode()[-3000:]
    return result


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_xmpp_js_over_websocket_exchanges_messages(http_up, xmpp, scheme):
    server = http_up
    web_acct, tcp_acct = await xmpp.account("web"), await xmpp.account("tcp")
    tcp = await xmpp.connect(tcp_acct, resource="desktop")

    def echo(msg):
        if msg["type"] in ("chat", "normal") and (msg["body"] or "").startswith("ping "):
            tcp.send_message(mto=msg["from"], mbody="pong " + msg["body"][5:], mtype="chat")

    tcp.add_event_handler("message", echo)
    nonce = secrets.token_hex(4)
    service = server.ws_url if scheme == "ws" else server.wss_url
    res = await run_xmpp_js(server, service, {
        "username": web_acct.name,
        "password": web_acct.password,
        "resource": "browser",
        "peer": tcp_acct.jid,
        "send_body": f"ping {nonce} 🌍 مرحبا",
        "expect_body": f"pong {nonce} 🌍 مرحبا",
    })
    assert res["ok"], f"@xmpp/client over {scheme}:// failed: {res}"
    if scheme == "ws":
        # No TLS: the classic profile (SASL2 only after TLS, XEP-0388 §3).
        assert res["jid"] == f"{web_acct.jid}/browser", res
        assert "success urn:ietf:params:xml:ns:xmpp-sasl" in res["nonzas"], res
    else:
        # SASL2 with Bind 2: the resource is the client's tag and a server-made id.
        assert res["jid"].startswith(f"{web_acct.jid}/browser/"), res
        assert "success urn:xmpp:sasl:2" in res["nonzas"], res
    got = await tcp.wait_message(lambda m: m["body"] == f"ping {nonce} 🌍 مرحبا")
    assert got["from"].full == res["jid"]
    reply = [r for r in res["received"] if r["body"] == f"pong {nonce} 🌍 مرحبا"][0]
    assert reply["from"] == tcp.boundjid.full


async def test_xmpp_js_wrong_password_fails(http_up, xmpp):
    acct = await xmpp.account("webbad")
    res = await run_xmpp_js(http_up, http_up.ws_url, {
        "username": acct.name, "password": "not-the-password", "resource": "x",
        "peer": acct.jid, "send_body": "x", "expect_body": "never",
    }, timeout=20)
    assert not res["ok"] and res["jid"] is None, res
    assert any("not-authorized" in e for e in res["errors"]), res["errors"]


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_websocket_framing(http_up, secure):
    server = http_up
    ws = await WebSocket.connect(server, secure=secure)
    try:
        assert ws.status == 101, f"WebSocket upgrade refused: {ws.status} {ws.headers}"
        assert ws.headers.get("sec-websocket-protocol") == "xmpp", ws.headers
        await ws.send_text(f"<open xmlns='{NS_FRAMING}' to='{server.domain}' version='1.0'/>")
        # RFC 7395 §3.3.3: every WebSocket message is one complete, standalone XML element
        opened = ET.fromstring(await ws.recv())
        assert opened.tag == f"{{{NS_FRAMING}}}open", opened.tag
        assert opened.get("from") == server.domain and opened.get("version") == "1.0" and opened.get("id")
        features = ET.fromstring(await ws.recv())
        assert features.tag == f"{{{NS_STREAM}}}features", features.tag
        assert features.find(f"{{{NS_TLS}}}starttls") is None, "STARTTLS offered over WebSocket"
        mechs = [m.text for m in features.findall(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")]
        assert "SCRAM-SHA-256" in mechs and "SCRAM-SHA-1" in mechs, mechs
        await ws.send_text(f"<close xmlns='{NS_FRAMING}'/>")
        closed = ET.fromstring(await ws.recv())
        assert closed.tag == f"{{{NS_FRAMING}}}close", closed.tag
        with pytest.raises((WsClosed, asyncio.TimeoutError)):
            while True:
                await ws.recv(timeout=5)
    finally:
        ws.close()


async def test_websocket_malformed_xml_closes_stream(http_up):
    server = http_up
    ws = await WebSocket.connect(server, secure=False)
    try:
        await ws.send_text(f"<open xmlns='{NS_FRAMING}' to='{server.domain}' version='1.0'/>")
        await ws.recv()
        await ws.recv()
        await ws.send_text("<message><body>unterminated</message>")
        cond = None
        try:
            while True:
                el = ET.fromstring(await ws.recv())
                if el.tag == f"{{{NS_STREAM}}}error":
                    cond = [c.tag.split("}")[1] for c in el if c.tag.startswith(f"{{{NS_STREAMS_ERR}}}")
                            and not c.tag.endswith("}text")]
                    break
        except WsClosed:
            pass
        assert cond is not None and cond[0] in ("not-well-formed", "bad-format"), cond
    finally:
        ws.close()


# ---- XEP-0156 -------------------------------------------------------------------------

def fetch(url: str, ctx: ssl.SSLContext | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Accept": "*/*"})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def check_ws_href(server, href: str) -> None:
    u = urllib.parse.urlsplit(href)
    assert u.scheme in ("ws", "wss"), href
    assert u.path == "/xmpp-websocket", href
    expected_port = server.http_port if u.scheme == "ws" else server.https_port
    assert u.port == expected_port, f"{href}: port should be {expected_port}"


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_host_meta_xrd(http_up, secure):
    server = http_up
    base = f"https://localhost:{server.https_port}" if secure else f"http://{server.host}:{server.http_port}"
    status, headers, body = fetch(base + "/.well-known/host-meta", tls_context(server.ca_path) if secure else None)
    assert status == 200
    assert "xml" in headers.get("content-type", ""), headers.get("content-type")
    root = ET.fromstring(body)
    assert root.tag == f"{{{NS_XRD}}}XRD", root.tag
    hrefs = [link.get("href") for link in root.findall(f"{{{NS_XRD}}}Link") if link.get("rel") == REL_WS]
    assert hrefs, f"no {REL_WS} link in host-meta: {body[:500]!r}"
    for h in hrefs:
        check_ws_href(server, h)


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_host_meta_json(http_up, secure):
    server = http_up
    base = f"https://localhost:{server.https_port}" if secure else f"http://{server.host}:{server.http_port}"
    status, headers, body = fetch(base + "/.well-known/host-meta.json",
                                  tls_context(server.ca_path) if secure else None)
    assert status == 200
    assert "json" in headers.get("content-type", ""), headers.get("content-type")
    doc = json.loads(body)
    hrefs = [link["href"] for link in doc.get("links", []) if link.get("rel") == REL_WS]
    assert hrefs, f"no {REL_WS} link in host-meta.json: {doc}"
    for h in hrefs:
        check_ws_href(server, h)
    # the XML and JSON documents advertise the same endpoints
    _, _, xml_body = fetch(base + "/.well-known/host-meta", tls_context(server.ca_path) if secure else None)
    xml_hrefs = [link.get("href") for link in ET.fromstring(xml_body).findall(f"{{{NS_XRD}}}Link")
                 if link.get("rel") == REL_WS]
    assert sorted(hrefs) == sorted(xml_hrefs)
