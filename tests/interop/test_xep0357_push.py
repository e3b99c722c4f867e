"""XEP-0357 Push Notifications, with kith's three senders: the standard publish
to an app server, built-in Web Push (RFC 8030 / RFC 8291 / RFC 8292) and the
signed webhook for a mobile push relay.

A local HTTP receiver plays the push service and the relay. It decrypts Web Push
payloads with the subscription's private key (http-ece, the reference
implementation of RFC 8188 aes128gcm, keyed per RFC 8291), verifies the VAPID
JWT (ES256 with the key the server publishes, `aud` = the receiver's origin,
`exp` in the future) and checks the webhook's HMAC-SHA256 signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
import pytest
import pytest_asyncio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from slixmpp.exceptions import IqError

from kithtest.server import free_port
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool, iq_error_condition

NS_PUSH = "urn:xmpp:push:0"
NS_DATA = "jabber:x:data"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
WEBHOOK_SECRET = "test-webhook-secret-" + base64.urlsafe_b64encode(os.urandom(9)).decode()
SM_PLUGINS = DEFAULT_PLUGINS + ("xep_0198",)


# ---------------------------------------------------------------------------
# the receiver: push service and relay in one
# ---------------------------------------------------------------------------

class Receiver:
    """Records every POST; answers with scripted statuses per path (default 201)."""

    def __init__(self):
        self.port = free_port()
        self.requests: list[dict] = []
        self.scripts: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append({
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "at": time.time(),
                    })
                    script = receiver.scripts.get(self.path)
                    status = script.pop(0) if script else 201
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def to(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    async def wait(self, path: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.to(path)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} request(s) to {path} expected within {timeout}s, got {len(self.to(path))}")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Subscription:
    """A browser's side of a Web Push subscription: a P-256 key pair and an auth secret."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.public = self.private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.auth = os.urandom(16)

    def fields(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "p256dh": _b64url(self.public), "auth": _b64url(self.auth)}

    def decrypt(self, request: dict) -> dict:
        assert request["headers"].get("content-encoding") == "aes128gcm"
        plain = http_ece.decrypt(request["body"], private_key=self.private_key,
                                 auth_secret=self.auth, version="aes128gcm")
        return json.loads(plain)


def check_vapid(request: dict, origin: str, server_key: str) -> dict:
    """RFC 8292 §3: `Authorization: vapid t=<JWT>, k=<key>`; returns the claims."""
    header = request["headers"].get("authorization", "")
    assert header.startswith("vapid "), header
    params = dict(part.strip().split("=", 1) for part in header[len("vapid "):].split(","))
    assert params["k"] == server_key, "the VAPID key is not the one the server publishes"
    token = params["t"]
    head_b64, claims_b64, sig_b64 = token.split(".")
    head = json.loads(_b64url_decode(head_b64))
    assert head["alg"] == "ES256", head
    signature = _b64url_decode(sig_b64)
    assert len(signature) == 64, "a JWS ES256 signature is R || S"
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64url_decode(params["k"]))
    try:
        public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AssertionError("the VAPID JWT signature does not verify") from None
    claims = json.loads(_b64url_decode(claims_b64))
    assert claims["aud"] == origin, f"aud {claims['aud']!r} is not the push resource's origin {origin!r}"
    now = time.time()
    assert now < claims["exp"] <= now + 24 * 3600 + 60, f"exp {claims['exp']} out of range"
    assert claims["sub"].startswith(("mailto:", "https:")), claims
    return claims


def check_signature(request: dict, secret: str) -> dict:
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    got = request["headers"].get("x-kith-signature")
    assert got is not None, "the webhook request is not signed"
    assert hmac.compare_digest(got, expected), "the webhook HMAC does not match the body"
    return json.loads(request["body"])


# ---------------------------------------------------------------------------
# XEP-0357 IQs (slixmpp has no plugin for it: raw stanzas)
# ---------------------------------------------------------------------------

def _form(fields: dict[str, str | list[str]]) -> ET.Element:
    x = ET.Element(f"{{{NS_DATA}}}x", {"type": "submit"})
    for var, value in fields.items():
        field = ET.SubElement(x, f"{{{NS_DATA}}}field", {"var": var})
        for v in value if isinstance(value, list) else [value]:
            ET.SubElement(field, f"{{{NS_DATA}}}value").text = v
    return x


async def enable(c, jid: str, node: str, fields: dict | None = None):
    iq = c.Iq()
    iq["type"] = "set"
    payload = ET.Element(f"{{{NS_PUSH}}}enable", {"jid": jid, "node": node})
    if fields is not None:
        payload.append(_form(fields))
    iq.xml.append(payload)
    return await iq.send(timeout=10)


async def disable(c, jid: str, node: str | None = None):
    iq = c.Iq()
    iq["type"] = "set"
    attrs = {"jid": jid}
    if node is not None:
        attrs["node"] = node
    iq.xml.append(ET.Element(f"{{{NS_PUSH}}}disable", attrs))
    return await iq.send(timeout=10)


async def refused(coro) -> str | None:
    with pytest.raises(IqError) as info:
        await coro
    return iq_error_condition(info.value)


def vapid_key(srv) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/api/v1/push/vapid", timeout=10) as res:
        assert res.headers.get("Content-Type", "").startswith("application/json")
        doc = json.loads(res.read())
    key = _b64url_decode(doc["publicKey"])
    assert len(key) == 65 and key[0] == 4, "applicationServerKey must be an uncompressed P-256 point"
    return doc["publicKey"]


async def sync(c):
    """Round trip to the server: everything c sent before has been handled."""
    await c.plugin["xep_0199"].ping(jid="localhost", timeout=10)


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

def push_overrides(receiver: Receiver, **extra) -> dict:
    push = {
        "allow_loopback_endpoints": True,
        "retry_delay_ms": 100,
        "attempts": 3,
        "webhook_url": receiver.url("/hook"),
        "webhook_secret": WEBHOOK_SECRET,
    }
    push.update(extra)
    return {"push": push}


@pytest.fixture(scope="module")
def receiver(backend):
    """One receiver per backend, so each backend's run sees only its own requests."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def push_server(backend, server_factory, receiver):
    srv = server_factory.start("push", backend, push_overrides(receiver))
    yield srv
    server_factory.stop(srv)


@pytest_asyncio.fixture
async def pool(push_server):
    p = ClientPool(push_server)
    yield p
    await p.close_all()


async def offline_browser(pool, receiver, account, path: str, resource: str = "browser") -> Subscription:
    """A browser device that enables Web Push and goes offline."""
    sub = Subscription(receiver.url(path))
    c = await pool.connect(account, resource=resource)
    await enable(c, "localhost", f"node-{resource}", sub.fields())
    await c.close()
    return sub


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

async def test_push_is_advertised_on_the_account(pool):
    bob = await pool.account("pdb")
    c = await pool.connect(bob)
    info = await c.plugin["xep_0030"].get_info(jid=bob.jid, timeout=10)
    features = {f.get("var") for f in info.xml.iter(f"{{{NS_DISCO_INFO}}}feature")}
    assert NS_PUSH in features


async def test_vapid_key_is_published_and_survives_a_restart(server_factory, backend, receiver):
    srv = server_factory.start("vapid", backend, push_overrides(receiver))
    try:
        first = vapid_key(srv)
        await asyncio.to_thread(srv.restart)
        assert vapid_key(srv) == first, "the VAPID key changed across a restart"
    finally:
        server_factory.stop(srv)


async def test_web_push_to_an_offline_browser_is_encrypted_and_signed(pool, receiver, push_server):
    alice, bob = await pool.account("wpa"), await pool.account("wpb")
    sub = await offline_browser(pool, receiver, bob, "/wp/offline")
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="secret words", mtype="chat")
    [request] = await receiver.wait("/wp/offline")
    payload = sub.decrypt(request)
    assert payload["sender"] == alice.jid
    assert payload["user"] == bob.jid
    assert payload["device"] == "browser"
    assert payload["count"] >= 1
    assert "body" not in payload, "the message text went to the push service although include_body is off"
    check_vapid(request, receiver.origin, vapid_key(push_server))
    assert int(request["headers"]["ttl"]) > 0
    # Receipts alone wake nobody.
    a.send_raw(f"<message to='{bob.jid}' type='chat'><received xmlns='urn:xmpp:receipts' id='x'/></message>")
    await sync(a)
    await asyncio.sleep(1.0)
    assert len(receiver.to("/wp/offline")) == 1


async def test_an_online_device_gets_no_push_until_it_goes_offline(pool, receiver):
    alice, bob = await pool.account("ona"), await pool.account("onb")
    sub = Subscription(receiver.url("/wp/online"))
    b = await pool.connect(bob, resource="browser")
    await enable(b, "localhost", "n-online", sub.fields())
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="you are here", mtype="chat")
    await b.wait_message(lambda m: m["body"] == "you are here")
    await asyncio.sleep(1.0)
    assert receiver.to("/wp/online") == [], "an online device was pushed"
    await b.close()
    await asyncio.sleep(0.3)
    a.send_message(mto=bob.jid, mbody="now you are gone", mtype="chat")
    [request] = await receiver.wait("/wp/online")
    assert sub.decrypt(request)["sender"] == alice.jid


async def test_a_dropped_session_waiting_for_resumption_is_pushed(pool, receiver):
    alice, bob = await pool.account("dra"), await pool.account("drb")
    sub = Subscription(receiver.url("/wp/detached"))
    b = await pool.connect(bob, resource="phone", plugins=SM_PLUGINS)
    await enable(b, "localhost", "n-detached", sub.fields())
    await asyncio.sleep(0.5)
    assert b.plugin["xep_0198"].sm_id, "server did not offer resumption"
    b.transport.abort()
    await asyncio.sleep(0.5)
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="wake up", mtype="chat")
    [request] = await receiver.wait("/wp/detached")
    assert sub.decrypt(request)["device"] == "phone"


async def test_only_the_offline_device_of_two_is_pushed(pool, receiver):
    alice, bob = await pool.account("twa"), await pool.account("twb")
    online = Subscription(receiver.url("/wp/two-online"))
    b = await pool.connect(bob, resource="laptop")
    await enable(b, "localhost", "n-laptop", online.fields())
    offline = await offline_browser(pool, receiver, bob, "/wp/two-offline", resource="phone")
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="which one", mtype="chat")
    [request] = await receiver.wait("/wp/two-offline")
    assert offline.decrypt(request)["device"] == "phone"
    await asyncio.sleep(0.5)
    assert receiver.to("/wp/two-online") == []


async def test_gone_subscription_is_removed_and_errors_are_retried(pool, receiver):
    alice, bob = await pool.account("gna"), await pool.account("gnb")
    receiver.scripts["/wp/gone"] = [410]
    receiver.scripts["/wp/flaky"] = [503, 500]
    await offline_browser(pool, receiver, bob, "/wp/gone", resource="old")
    flaky = await offline_browser(pool, receiver, bob, "/wp/flaky", resource="new")
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="first", mtype="chat")
    await receiver.wait("/wp/gone")
    attempts = await receiver.wait("/wp/flaky", count=3)
    # The third attempt succeeded, after a delay that doubled (100 ms, then 200 ms).
    gaps = [attempts[1]["at"] - attempts[0]["at"], attempts[2]["at"] - attempts[1]["at"]]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps
    assert flaky.decrypt(attempts[2])["sender"] == alice.jid
    await asyncio.sleep(0.5)
    a.send_message(mto=bob.jid, mbody="second", mtype="chat")
    await receiver.wait("/wp/flaky", count=4)
    await asyncio.sleep(1.0)
    assert len(receiver.to("/wp/gone")) == 1, "a subscription the push service called gone was pushed again"
    assert len(receiver.to("/wp/flaky")) == 4, "a delivered notification was sent again"


async def test_invalid_subscriptions_are_refused(pool, push_server, receiver):
    bob = await pool.account("ivb")
    c = await pool.connect(bob)
    good = Subscription(receiver.url("/wp/never")).fields()
    for endpoint in [
        "http://push.example.net/x",          # not https
        "ftp://push.example.net/x",
        "not a url",
        "https://user:pw@push.example.net/x",
        "https://10.0.0.7/x",                  # private address
        "https://169.254.169.254/latest",      # link-local (cloud metadata)
        "https://[fd00::1]/x",
        "http://10.0.0.7/x",                   # loopback tests open loopback only
        "https://push.example.net/" + "a" * 3000,
    ]:
        condition = await refused(enable(c, "localhost", "n", {**good, "endpoint": endpoint}))
        assert condition in ("not-acceptable", "bad-request"), f"{endpoint}: {condition}"
    assert await refused(enable(c, "localhost", "n", {**good, "p256dh": _b64url(b"\x04" + b"\x01" * 64)})) == "bad-request"
    assert await refused(enable(c, "localhost", "n", {**good, "auth": _b64url(b"short")})) == "bad-request"
    assert await refused(enable(c, "localhost", "n", {k: v for k, v in good.items() if k != "auth"})) == "bad-request"
    # XEP-0357 itself: jid and node are required.
    iq = c.Iq()
    iq["type"] = "set"
    iq.xml.append(ET.Element(f"{{{NS_PUSH}}}enable", {"jid": "push.example.org"}))
    assert await refused(iq.send(timeout=10)) == "bad-request"


async def test_loopback_endpoints_are_refused_by_default(xmpp, receiver):
    """The default configuration accepts no http:// or loopback endpoint."""
    bob = await xmpp.account("lbb")
    c = await xmpp.connect(bob)
    fields = Subscription(receiver.url("/wp/default")).fields()
    assert await refused(enable(c, "localhost", "n", fields)) == "not-acceptable"
    for endpoint in ("https://localhost/x", "https://127.0.0.1/x", "https://[::1]/x"):
        condition = await refused(enable(c, "localhost", "n", {**fields, "endpoint": endpoint}))
        assert condition == "not-acceptable", endpoint


async def test_webhook_is_signed_and_carries_the_body_when_configured(server_factory, backend, receiver):
    srv = server_factory.start("hook", backend, {"push": {
        **push_overrides(receiver)["push"],
        "webhook_url": receiver.url("/hook/body"),
        "include_body": True,
    }})
    p = ClientPool(srv)
    try:
        alice, bob = await p.account("wha"), await p.account("whb")
        phone = await p.connect(bob, resource="phone")
        await enable(phone, "localhost", "fcm:token-123", {
            "FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
            "platform": "fcm",
        })
        browser = Subscription(receiver.url("/wp/body"))
        await enable(phone, "localhost", "browser-node", browser.fields())
        await phone.close()
        a = await p.connect(alice)
        a.send_message(mto=bob.jid, mbody="meet at noon", mtype="chat")
        [request] = await receiver.wait("/hook/body")
        payload = check_signature(request, WEBHOOK_SECRET)
        assert request["headers"]["content-type"] == "application/json"
        assert payload["user"] == bob.jid
        assert payload["device"] == "phone"
        assert payload["node"] == "fcm:token-123"
        assert payload["sender"] == alice.jid
        assert payload["count"] == 1
        assert payload["body"] == "meet at noon"
        assert payload["options"] == {"platform": "fcm"}
        # Web Push carries the body too on this server.
        [pushed] = await receiver.wait("/wp/body")
        assert browser.decrypt(pushed)["body"] == "meet at noon"
        # The count grows while the device stays away.
        a.send_message(mto=bob.jid, mbody="or at one", mtype="chat")
        requests = await receiver.wait("/hook/body", count=2)
        assert check_signature(requests[1], WEBHOOK_SECRET)["count"] == 2
        # A relay answering 410 removes the registration.
        receiver.scripts["/hook/body"] = [410]
        a.send_message(mto=bob.jid, mbody="third", mtype="chat")
        await receiver.wait("/hook/body", count=3)
        await asyncio.sleep(0.5)
        a.send_message(mto=bob.jid, mbody="fourth", mtype="chat")
        await receiver.wait("/wp/body", count=4)
        await asyncio.sleep(0.5)
        assert len(receiver.to("/hook/body")) == 3
    finally:
        await p.close_all()
        server_factory.stop(srv)


async def test_webhook_registration_needs_a_configured_webhook(xmpp):
    bob = await xmpp.account("nwb")
    c = await xmpp.connect(bob)
    assert await refused(enable(c, "localhost", "token")) == "not-acceptable"


async def test_standard_publish_reaches_the_app_server_with_publish_options(pool):
    """XEP-0357 §5: the app server here is a local full JID (no s2s yet)."""
    alice, bob, app = await pool.account("apa"), await pool.account("apb"), await pool.account("app")
    server = await pool.connect(app, resource="push")
    b = await pool.connect(bob, resource="phone")
    await enable(b, server.boundjid.full, "yxs32uqsflafdk3iuqo", {
        "FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
        "secret": "eruio234vzxc2kla-91",
    })
    await b.close()
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="private words", mtype="chat")
    iq = await server.wait_iq(lambda s: s.xml.find(f"{{{NS_PUBSUB}}}pubsub") is not None, what="push publish")
    assert iq["type"] == "set"
    assert iq["from"].full == bob.jid
    publish = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    assert publish.get("node") == "yxs32uqsflafdk3iuqo"
    form = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in form.findall(f"{{{NS_DATA}}}field")}
    assert fields["FORM_TYPE"] == "urn:xmpp:push:summary"
    assert fields["message-count"] == "1"
    assert fields["last-message-sender"] == alice.jid
    assert "last-message-body" not in fields
    options = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    assert options is not None, "publish-options were not echoed"
    secret = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in options.findall(f"{{{NS_DATA}}}field")}
    assert secret["secret"] == "eruio234vzxc2kla-91"

    # §6: after <disable/>, nothing more is published.
    b2 = await pool.connect(bob, resource="phone")
    await disable(b2, server.boundjid.full)
    await b2.close()
    server.forget()
    a.send_message(mto=bob.jid, mbody="more", mtype="chat")
    await sync(a)
    await asyncio.sleep(1.0)
    assert not server.matching(lambda s: s.xml.find(f"{{{NS_PUBSUB}}}pubsub") is not None)


async def test_publish_to_another_domain_is_routed_and_bounces(pool):
    """No server-to-server yet: the publish bounces silently; nothing breaks."""
    alice, bob = await pool.account("rda"), await pool.account("rdb")
    b = await pool.connect(bob, resource="phone")
    await enable(b, "push.example.org", "node-1")
    await b.close()
    a = await pool.connect(alice)
    a.send_message(mto=bob.jid, mbody="to a phone far away", mtype="chat")
    await sync(a)
    b2 = await pool.connect(bob, resource="phone")
    await b2.wait_message(lambda m: m["body"] == "to a phone far away")
