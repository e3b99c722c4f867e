"""Hostile and broken input (RFC 6120 §4.9 stream errors, §11 restricted XML).

Runs against its own server with small limits (max_stanza_size = 65536,
auth_timeout_secs = 5, max_auth_failures = 5, max_roster_items = 3,
max_roster_requests = 2). Throughout every test of this
module a pair of logged-in slixmpp clients (the "canary") keeps exchanging
messages; after each test the canary must still get through, the server
process must be alive and its RSS below RSS_LIMIT_MB. A bad stream closes
alone; nobody else notices.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import pytest
import pytest_asyncio
from slixmpp.exceptions import IqError

from kithtest.raw import NS_SASL, RawStream, StreamClosed, local
from kithtest.xmpp import ClientPool, server_roster, unique_name, unique_password

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_STANZA = 65536
AUTH_TIMEOUT = 5
MAX_AUTH_FAILURES = 5
MAX_ROSTER = 3
MAX_REQUESTS = 2
RSS_LIMIT_MB = 200
CLOSE_WAIT = 10  # seconds a server may take to close a stream after a stream error


# ---- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_server(backend, server_factory):
    srv = server_factory.start("badinput", backend, {
        "limits": {
            "max_stanza_size": MAX_STANZA,
            "auth_timeout_secs": AUTH_TIMEOUT,
            "max_auth_failures": MAX_AUTH_FAILURES,
            "max_roster_items": MAX_ROSTER,
            "max_roster_requests": MAX_REQUESTS,
        },
    })
    yield srv
    server_factory.stop(srv)


class Canary:
    """Two logged-in users pinging each other every 200 ms in the background."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.rounds = 0
        self.failures: list[str] = []
        self.max_rtt = 0.0
        self._stop = False
        self.task: asyncio.Task | None = None

    async def roundtrip(self, tag: str, timeout: float = 5.0) -> float:
        t0 = time.monotonic()
        self.a.send_message(mto=self.b.boundjid.full, mbody=f"canary {tag}", mtype="chat")
        await self.b.wait_message(lambda m: m["body"] == f"canary {tag}", timeout, what=f"canary {tag}")
        self.b.send_message(mto=self.a.boundjid.full, mbody=f"ack {tag}", mtype="chat")
        await self.a.wait_message(lambda m: m["body"] == f"ack {tag}", timeout, what=f"ack {tag}")
        rtt = time.monotonic() - t0
        self.max_rtt = max(self.max_rtt, rtt)
        self.a.forget()
        self.b.forget()
        return rtt

    async def _run(self):
        i = 0
        while not self._stop:
            i += 1
            try:
                await self.roundtrip(str(i))
                self.rounds += 1
            except AssertionError as exc:
                self.failures.append(f"round {i}: {exc}")
            except Exception as exc:  # pragma: no cover - recorded as failure
                self.failures.append(f"round {i}: {exc!r}")
            await asyncio.sleep(0.2)

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        self._stop = True
        if self.task:
            try:
                await asyncio.wait_for(self.task, 15)
            except Exception:
                self.task.cancel()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def canary(bad_server):
    pool = ClientPool(bad_server)
    a_acct, b_acct = await pool.account("canarya"), await pool.account("canaryb")
    a = await pool.connect(a_acct, resource="canary")
    b = await pool.connect(b_acct, resource="canary")
    c = Canary(a, b)
    await c.roundtrip("warmup", timeout=10)
    c.start()
    yield c
    await c.stop()
    await pool.close_all()


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def _canary_keeps_talking(canary, bad_server):
    rounds_before, failures_before = canary.rounds, len(canary.failures)
    yield
    new_failures = canary.failures[failures_before:]
    assert not new_failures, f"canary messages were lost or late during this test: {new_failures}"
    assert canary.task is not None and not canary.task.done(), "canary task stopped"
    # the canary must have completed rounds while the test ran (or completes one now)
    deadline = time.monotonic() + 10
    while canary.rounds <= rounds_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert canary.rounds > rounds_before, "canary made no progress during the test"
    assert bad_server.alive(), "server process died"
    rss = bad_server.rss_mb()
    assert rss < RSS_LIMIT_MB, f"server RSS {rss:.0f} MB >= {RSS_LIMIT_MB} MB"


@pytest_asyncio.fixture(loop_scope="module")
async def pool(bad_server):
    p = ClientPool(bad_server)
    yield p
    await p.close_all()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacker(bad_server):
    """An ordinary account whose owner sends broken things over raw streams."""
    name, pw = unique_name("mallory"), unique_password()
    await bad_server.aadd_user(name, pw)
    return name, pw


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rcpt_acct(bad_server):
    name, pw = unique_name("rcpt"), unique_password()
    jid = await bad_server.aadd_user(name, pw)
    return name, pw, jid


@pytest_asyncio.fixture(loop_scope="module")
async def rcpt(pool, rcpt_acct):
    """A logged-in slixmpp user that broken stanzas are addressed to."""
    name, pw, jid = rcpt_acct
    return await pool.connect(jid, pw, resource="victim")


async def stream_at(server, stage: str, attacker=None) -> RawStream:
    """A raw stream at the given stage: 'pre-tls', 'post-tls' (TLS, not authenticated),
    'authenticated' (TLS + SASL + bind + presence), or 'direct-tls'."""
    if stage == "direct-tls":
        s = await RawStream.connect(server, direct_tls=True)
        await s.open()
        return s
    s = await RawStream.connect(server)
    if stage == "pre-tls":
        await s.open()
    elif stage == "post-tls":
        await s.secure()
    elif stage == "authenticated":
        name, pw = attacker
        await s.login(name, pw, "evil")
    else:
        raise ValueError(stage)
    return s


async def expect_stream_error(s: RawStream, allowed: set[str], what: str) -> list[str] | None:
    try:
        cond = await s.stream_error(CLOSE_WAIT)
    except asyncio.TimeoutError:
        pytest.fail(f"{what}: no stream error and the stream stayed open for {CLOSE_WAIT}s")
    assert cond is not None, f"{what}: connection closed without a <stream:error/> (expected one of {allowed})"
    assert cond and cond[0] in allowed, f"{what}: stream error {cond}, expected one of {sorted(allowed)}"
    assert await s.wait_closed(CLOSE_WAIT), f"{what}: stream error sent but connection not closed"
    return cond


# ---- malformed XML --------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["pre-tls", "post-tls", "authenticated"])
async def test_malformed_xml_is_not_well_formed(bad_server, attacker, stage):
    s = await stream_at(bad_server, stage, attacker)
    try:
        await s.send("<message><body>oops</message>")
        await expect_stream_error(s, {"not-well-formed"}, f"mismatched tag ({stage})")
    finally:
        s.close()


MALFORMED = {
    "unquoted-attribute": ("<message to=x><body>a</body></message>", {"not-well-formed"}),
    "duplicate-attribute": ("<message to='a@localhost' to='b@localhost'><body>a</body></message>",
                            {"not-well-formed"}),
    "nul-byte": ("<message><body>a\x00b</body></message>", {"not-well-formed"}),
    "control-char": ("<message><body>a\x01b</body></message>", {"not-well-formed"}),
    "invalid-utf8": (b"<message><body>\xff\xfe\xc3\x28</body></message>", {"not-well-formed", "unsupported-encoding"}),
    "unbound-prefix": ("<foo:message><body>a</body></foo:message>", {"not-well-formed", "invalid-namespace"}),
    "undefined-entity": ("<message><body>&nosuchentity;</body></message>", {"not-well-formed", "restricted-xml"}),
    "bad-char-ref": ("<message><body>&#0;</body></message>", {"not-well-formed"}),
    "wrong-stream-close": ("</stream:streamx>", {"not-well-formed"}),
    "lt-in-attribute": ("<message to='a<b'/>", {"not-well-formed"}),
    "second-root-text": ("<message/>>>><<<", {"not-well-formed"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_variants_from_authenticated_user(bad_server, attacker, case):
    payload, allowed = MALFORMED[case]
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        await s.send(payload)
        await expect_stream_error(s, allowed, case)
    finally:
        s.close()


async def test_garbage_bytes_before_stream_header(bad_server):
    s = await RawStream.connect(bad_server)
    try:
        await s.send(os.urandom(4096))
        try:
            cond = await s.stream_error(CLOSE_WAIT)
        except asyncio.TimeoutError:
            pytest.fail("server kept a connection open after 4 KB of random bytes")
        assert cond is None or cond[0] in ("not-well-formed", "bad-format", "unsupported-encoding",
                                           "invalid-namespace"), cond
        assert await s.wait_closed(CLOSE_WAIT)
    finally:
        s.close()


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    bytes.fromhex("16030100c4010000c00303") + os.urandom(180),  # a TLS ClientHello on the STARTTLS port
])
async def test_foreign_protocols_on_c2s_port(bad_server, junk):
    s = await RawStream.connect(bad_server)
    try:
        await s.send(junk)
        try:
            await s.stream_error(CLOSE_WAIT)
        except asyncio.TimeoutError:
            pytest.fail("server kept a connection open after non-XMPP bytes")
        assert await s.wait_closed(CLOSE_WAIT)
    finally:
        s.close()


async def test_plaintext_on_direct_tls_port(bad_server):
    reader, writer = await asyncio.open_connection(bad_server.host, bad_server.c2s_tls_port)
    try:
        writer.write(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                     b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        await writer.drain()
        deadline = time.monotonic() + CLOSE_WAIT
        closed = False
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(reader.read(4096), deadline - time.monotonic())
            except (asyncio.TimeoutError, ConnectionError):
                closed = True
                break
            if not data:
                closed = True
                break
            assert b"<message" not in data and b"<stream:features" not in data, "plaintext XMPP on the TLS port"
        assert closed
    finally:
        writer.close()


# ---- size limits ----------------------------------------------------------------------

def oversize_payloads(to: str) -> dict[str, list[str]]:
    big = "A" * (MAX_STANZA + 4096)
    return {
        "long-body": [f"<message to='{to}' type='chat'><body>{big}</body></message>"],
        "long-attribute": [f"<message to='{to}' type='chat' id='{big}'><body>x</body></message>"],
        "many-children": [f"<message to='{to}' type='chat'>" + "<x xmlns='urn:example:x'/>" * 4000 + "</message>"],
        # never closed: the server must stop reading at the limit, not buffer forever
        "unterminated": [f"<message to='{to}' type='chat'><body>"] + ["B" * 8192] * 24,
        "long-name": ["<" + "n" * (MAX_STANZA + 100) + "/>"],
    }


@pytest.mark.parametrize("case", ["long-body", "long-attribute", "many-children", "unterminated", "long-name"])
async def test_oversize_stanza_is_policy_violation(bad_server, attacker, rcpt, rcpt_acct, case):
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        chunks = oversize_payloads(rcpt.boundjid.full)[case]
        try:
            for ch in chunks:
                await s.send(ch)
        except StreamClosed:
            pass  # the server may cut us off mid-send
        await expect_stream_error(s, {"policy-violation"}, f"oversize stanza ({case})")
    finally:
        s.close()
    await asyncio.sleep(0.5)
    assert not rcpt.matching(lambda m: m.xml.tag == "{jabber:client}message" and len(m["body"] or "") > MAX_STANZA), \
        "oversize message was delivered"


async def test_oversize_before_authentication(bad_server):
    s = await stream_at(bad_server, "post-tls")
    try:
        try:
            await s.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>")
            for _ in range(12):
                await s.send(base64.b64encode(b"\0" * 6144).decode())
        except StreamClosed:
            pass
        await expect_stream_error(s, {"policy-violation"}, "oversize <auth/> before authentication")
    finally:
        s.close()


async def test_stanza_just_below_limit_is_delivered(bad_server, attacker, rcpt):
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        body = "ü" * 25000  # 50 000 bytes of UTF-8
        await s.send(f"<message to='{rcpt.boundjid.full}' type='chat' id='below'><body>{body}</body></message>")
        got = await rcpt.wait_message(lambda m: m["id"] == "below", timeout=10)
        assert got["body"] == body
    finally:
        s.close()


async def test_deeply_nested_element(bad_server, attacker, rcpt_acct):
    """A deeply nested (but small) stanza must not crash the server (stack
    exhaustion in a recursive parser or serializer). Acceptable outcomes: a
    stream error (a depth limit), a stanza error back to the sender, or delivery.
    Silently losing it is not."""
    depth = 5000
    name, pw, _jid = rcpt_acct
    # raw recipient: a client library may itself choke on 5000 levels
    r = await RawStream.connect(bad_server)
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        rjid = await r.login(name, pw, "deep")
        payload = (f"<message to='{rjid}' type='chat' id='deep'><body>deep</body>"
                   f"<x xmlns='urn:example:deep'>" + "<a>" * depth + "</a>" * depth + "</x></message>")
        assert len(payload.encode()) < MAX_STANZA
        try:
            await s.send(payload)
        except StreamClosed:
            pass
        outcome = None
        deadline = time.monotonic() + 15
        while outcome is None and time.monotonic() < deadline:
            for stream, who in ((s, "sender"), (r, "recipient")):
                try:
                    el = await stream.next(0.2)
                except asyncio.TimeoutError:
                    continue
                except StreamClosed:
                    if who == "sender":
                        outcome = "sender stream closed"
                        break
                    raise AssertionError("the recipient's stream was closed by someone else's deep stanza")
                if local(el.tag) == "error" and who == "sender":
                    outcome = "stream error " + ",".join(c.tag for c in el)
                elif local(el.tag) == "message" and el.get("id") == "deep":
                    outcome = f"{who} got message type={el.get('type')}"
        assert outcome is not None, "deeply nested message silently vanished (no error, no delivery)"
    finally:
        s.close()
        r.close()


# ---- restricted XML (RFC 6120 §11.1) ----------------------------------------------------

async def test_doctype_in_prolog(bad_server):
    s = await RawStream.connect(bad_server)
    try:
        await s.send("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'expanded'>]>"
                     "<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams'>")
        await expect_stream_error(s, {"restricted-xml", "not-well-formed"}, "DOCTYPE with entity declaration")
    finally:
        s.close()


async def test_billion_laughs(bad_server):
    ents = "<!ENTITY l0 'lol'>" + "".join(
        f"<!ENTITY l{i} '" + f"&l{i - 1};" * 10 + "'>" for i in range(1, 10))
    s = await RawStream.connect(bad_server)
    try:
        try:
            await s.send(f"<?xml version='1.0'?><!DOCTYPE stream:stream [{ents}]>"
                         "<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
                         "xmlns:stream='http://etherx.jabber.org/streams'><message><body>&l9;</body></message>")
        except StreamClosed:
            pass
        await expect_stream_error(s, {"restricted-xml", "not-well-formed"}, "billion laughs")
    finally:
        s.close()


async def test_doctype_after_authentication(bad_server, attacker):
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        await s.send("<!DOCTYPE message [<!ENTITY x 'y'>]><message><body>&x;</body></message>")
        await expect_stream_error(s, {"restricted-xml", "not-well-formed"}, "DOCTYPE mid-stream")
    finally:
        s.close()


RESTRICTED = {
    "processing-instruction": "<?evil instruction?>",
    "comment": "<!-- a comment -->",
    "comment-inside-stanza": "<message to='nobody@localhost'><!-- hidden --><body>x</body></message>",
    "pi-inside-stanza": "<message to='nobody@localhost'><?pi data?><body>x</body></message>",
}


@pytest.mark.parametrize("stage", ["pre-tls", "authenticated"])
@pytest.mark.parametrize("case", sorted(RESTRICTED))
async def test_restricted_xml(bad_server, attacker, case, stage):
    s = await stream_at(bad_server, stage, attacker)
    try:
        await s.send(RESTRICTED[case])
        await expect_stream_error(s, {"restricted-xml"}, f"{case} ({stage})")
    finally:
        s.close()


# ---- stanzas before authentication ------------------------------------------------------

PRE_AUTH_STANZAS = {
    "message": "<message to='{to}' type='chat' id='sneaky'><body>sneaky</body></message>",
    "presence": "<presence to='{to}' type='subscribed'/>",
    "iq-roster": "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
}


@pytest.mark.parametrize("kind", sorted(PRE_AUTH_STANZAS))
async def test_stanza_before_authentication_is_not_authorized(bad_server, rcpt, kind):
    s = await stream_at(bad_server, "post-tls")
    try:
        await s.send(PRE_AUTH_STANZAS[kind].format(to=rcpt.boundjid.bare))
        await expect_stream_error(s, {"not-authorized"}, f"{kind} before authentication")
        answered = [e for e in s.log if local(e.tag) == "iq" and e.get("type") == "result"]
        assert not answered, "an iq was answered before authentication"
    finally:
        s.close()
    await asyncio.sleep(0.5)
    assert not rcpt.matching(lambda st: st["id"] == "sneaky" or
                             (st.xml.tag == "{jabber:client}presence" and st["type"] == "subscribed")), \
        "a stanza sent before authentication reached its recipient"


async def test_message_after_auth_before_bind_is_not_delivered(bad_server, attacker, rcpt):
    name, pw = attacker
    s = await stream_at(bad_server, "post-tls")
    try:
        el = await s.auth_plain(name, pw)
        assert local(el.tag) == "success"
        s._reset_parser()
        await s.open()
        await s.send(f"<message to='{rcpt.boundjid.full}' type='chat' id='unbound'><body>unbound</body></message>")
        await expect_stream_error(s, {"not-authorized"}, "message before resource binding")
    finally:
        s.close()
    await asyncio.sleep(0.5)
    assert not rcpt.matching(lambda st: st["id"] == "unbound")


# ---- address spoofing ---------------------------------------------------------------------

SPOOFS = {
    "other-user-full": "{victim}/phone",
    "other-user-bare": "{victim}",
    "own-bare-other-resource": "{me}/not-my-resource",
    "server-domain": "localhost",
    "foreign-domain": "boss@evil.example/x",
}


@pytest.mark.parametrize("case", sorted(SPOOFS))
async def test_spoofed_from_is_never_seen_by_recipient(bad_server, attacker, rcpt, rcpt_acct, pool, case):
    name, _pw = attacker
    victim = await pool.account("spoofvictim")
    spoof = SPOOFS[case].format(victim=victim.jid, me=f"{name}@localhost")
    s = await stream_at(bad_server, "authenticated", attacker)
    body = f"spoof {case}"
    try:
        real = s.jid
        await s.send(f"<message from='{spoof}' to='{rcpt.boundjid.full}' type='chat' id='spoof'>"
                     f"<body>{body}</body></message>")
        # Either the message arrives stamped with the real sender, or the
        # sender's stream is closed with <invalid-from/> (RFC 6120 §4.9.3.9).
        deadline = time.monotonic() + 10
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            got = rcpt.matching(lambda m: m.xml.tag == "{jabber:client}message" and m["body"] == body)
            if got:
                assert got[0]["from"].full == real, \
                    f"recipient saw from={got[0]['from']} (spoofed {spoof}, real {real})"
                outcome = "delivered with the real sender"
                break
            try:
                el = await s.next(0.1)
            except asyncio.TimeoutError:
                continue
            except StreamClosed:
                pytest.fail("sender's stream closed without a stream error")
            if local(el.tag) == "error":
                conds = [local(c.tag) for c in el if not c.tag.endswith("}text")]
                assert conds[:1] == ["invalid-from"], f"stream error {conds}, expected invalid-from"
                assert await s.wait_closed(CLOSE_WAIT)
                outcome = "invalid-from"
        assert outcome, "spoofed message neither delivered (with the real from) nor refused with <invalid-from/>"
    finally:
        s.close()
    await asyncio.sleep(0.3)
    for m in rcpt.matching(lambda m: m.xml.tag == "{jabber:client}message" and m["body"] == body):
        assert m["from"].full == real


async def test_spoofed_subscription_approval(bad_server, attacker, pool):
    """A forged <presence type='subscribed'/> must not make the victim's roster trust anyone."""
    name, _pw = attacker
    alice = await pool.account("alice")
    a = await pool.connect(alice)
    # alice asked carol for a subscription; mallory forges carol's approval
    carol = await pool.account("carol")
    a.send_presence(pto=carol.jid, ptype="subscribe")
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        await s.send(f"<presence from='{carol.jid}' to='{alice.jid}' type='subscribed'/>")
        try:
            await s.stream_error(3)
        except asyncio.TimeoutError:
            pass
    finally:
        s.close()
    await asyncio.sleep(1.0)
    items = await server_roster(a)
    assert items.get(carol.jid, {}).get("subscription", "none") in ("none", "from"), \
        f"forged approval changed alice's roster: {items.get(carol.jid)}"
    forged = a.matching(lambda p: p.xml.tag == "{jabber:client}presence" and p["type"] == "subscribed"
                        and p["from"].bare == carol.jid)
    assert not forged, "alice received a forged subscription approval from carol"


# ---- authentication abuse ------------------------------------------------------------------

@pytest.mark.timeout(420)
async def test_rapid_failed_logins(bad_server, attacker, pool):
    name, pw = attacker
    total_attempts = 200
    per_stream = MAX_AUTH_FAILURES
    n_streams = total_attempts // per_stream
    sem = asyncio.Semaphore(8)
    outcomes: list[str] = []
    closures: list[str] = []

    async def one_stream(i: int):
        async with sem:
            s = await stream_at(bad_server, "post-tls")
            try:
                user = name if i % 2 == 0 else f"ghost{i}"
                for attempt in range(per_stream):
                    el = await s.auth_plain(user, f"wrong-{i}-{attempt}", timeout=30)
                    outcomes.append(local(el.tag))
                    if local(el.tag) == "success":
                        return
                # after max_auth_failures, the stream must end (possibly only at the next attempt)
                try:
                    cond = await s.stream_error(5)
                except asyncio.TimeoutError:
                    try:
                        el = await s.auth_plain(user, "one-more", timeout=30)
                        outcomes.append("extra-" + local(el.tag))
                        cond = await s.stream_error(CLOSE_WAIT)
                    except StreamClosed:
                        cond = None
                    except asyncio.TimeoutError:
                        closures.append("still open after too many failures")
                        return
                closures.append(cond[0] if cond else "closed-without-error")
                await s.wait_closed(CLOSE_WAIT)
            finally:
                s.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one_stream(i) for i in range(n_streams)))
    elapsed = time.monotonic() - t0
    assert "success" not in outcomes and "extra-success" not in outcomes, "a wrong password was accepted"
    assert outcomes.count("failure") == total_attempts, f"{outcomes.count('failure')} failures of {total_attempts}"
    bad_closures = [c for c in closures if c not in ("policy-violation", "not-authorized")]
    assert len(closures) == n_streams and not bad_closures, \
        f"after {MAX_AUTH_FAILURES} failures each stream must end with policy-violation/not-authorized: {closures}"
    # the server still answers, and the real owner of the account can still log in
    s = await RawStream.connect(bad_server)
    try:
        features = await s.open(timeout=10)
        assert features is not None
    finally:
        s.close()
    c = await pool.connect(f"{name}@localhost", pw, timeout=30)
    assert c.boundjid.user == name
    print(f"200 failed logins took {elapsed:.1f}s")


async def test_unauthenticated_stream_times_out(bad_server):
    t0 = time.monotonic()
    streams = [await stream_at(bad_server, "pre-tls"), await stream_at(bad_server, "post-tls")]
    try:
        for s in streams:
            closed = await s.wait_closed(AUTH_TIMEOUT + 15)
            assert closed, f"unauthenticated stream still open {time.monotonic() - t0:.0f}s later"
        assert time.monotonic() - t0 >= AUTH_TIMEOUT - 1, "closed before auth_timeout_secs"
    finally:
        for s in streams:
            s.close()


async def test_silent_tcp_connections_are_closed(bad_server):
    conns = []
    for _ in range(100):
        conns.append(await asyncio.open_connection(bad_server.host, bad_server.c2s_port))
    try:
        async def closed(reader):
            try:
                while await asyncio.wait_for(reader.read(4096), AUTH_TIMEOUT + 20):
                    pass
                return True
            except asyncio.TimeoutError:
                return False
            except ConnectionError:
                return True
        results = await asyncio.gather(*(closed(r) for r, _w in conns))
        assert all(results), f"{results.count(False)} of 100 silent connections were never closed"
    finally:
        for _r, w in conns:
            w.close()


async def test_slowloris_trickle_is_cut_off(bad_server):
    header = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
              "xmlns:stream='http://etherx.jabber.org/streams'>")
    reader, writer = await asyncio.open_connection(bad_server.host, bad_server.c2s_port)
    t0 = time.monotonic()
    cut = False
    try:
        for ch in header * 10:
            if reader.at_eof():
                cut = True
                break
            try:
                writer.write(ch.encode())
                await writer.drain()
            except ConnectionError:
                cut = True
                break
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.5)
                if data == b"":
                    cut = True
                    break
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - t0 > AUTH_TIMEOUT + 20:
                break
        assert cut, f"a client trickling one byte per 0.5 s was not cut off after {time.monotonic() - t0:.0f}s"
    finally:
        writer.close()


async def test_authenticated_idle_session_is_not_timed_out(bad_server, attacker):
    s = await stream_at(bad_server, "authenticated", attacker)
    try:
        await asyncio.sleep(AUTH_TIMEOUT + 3)
        await s.send("<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        el = await s.next(10)
        while not (local(el.tag) == "iq" and el.get("id") == "alive"):
            el = await s.next(10)
        assert el.get("type") == "result"
    finally:
        s.close()


# ---- roster size ----------------------------------------------------------------------

async def test_strangers_cannot_grow_a_roster_without_end(pool):
    """Each stranger's subscription request is a row the server keeps: past
    [limits] max_roster_requests a request is declined (an error and
    `unsubscribed`, which clears the stranger's pending ask). They are counted
    apart from the owner's contacts, which max_roster_items bounds: changes to
    items already there always work."""
    victim = await pool.account("popular")
    strangers = [await pool.account(f"fan{i}") for i in range(MAX_REQUESTS + 1)]
    fans = [await pool.connect(acct) for acct in strangers]
    # The victim is offline: each request is stored (RFC 6121 §3.1.3). A
    # session handles its stanzas in order, so the ping's answer means the
    # request before it has been handled.
    for fan in fans[:MAX_REQUESTS]:
        fan.send_presence(pto=victim.jid, ptype="subscribe")
        await fan.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    last = fans[MAX_REQUESTS]
    last.send_presence(pto=victim.jid, ptype="subscribe")
    bounce = await last.wait_presence(lambda p: p["type"] == "error", what="bounced subscription request")
    assert bounce["from"].bare == victim.jid
    assert bounce["error"]["condition"] == "not-allowed", str(bounce)
    await last.wait_presence(lambda p: p["type"] == "unsubscribed" and p["from"].bare == victim.jid,
                             what="the declined request's unsubscribed")
    await last.wait_iq(lambda iq: iq["type"] == "set" and any(
        it.get("jid") == victim.jid and it.get("ask") is None
        for it in iq.xml.iter("{jabber:iq:roster}item")), what="roster push clearing the pending ask")

    v = await pool.connect(victim)
    requests = set()
    while len(requests) < MAX_REQUESTS:
        req = await v.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare not in requests,
                                    what="stored subscription requests")
        requests.add(req["from"].bare)
    assert requests == {acct.jid for acct in strangers[:MAX_REQUESTS]}

    # The requests leave the owner's own contacts their room, up to the cap.
    friends = [await pool.account(f"friend{i}") for i in range(MAX_ROSTER + 1)]
    for friend in friends[:MAX_ROSTER]:
        await v.update_roster(friend.jid, name="friend", timeout=10)
    with pytest.raises(IqError) as refused:
        await v.update_roster(friends[MAX_ROSTER].jid, name="one too many", timeout=10)
    assert refused.value.iq["error"]["condition"] == "not-allowed"
    assert "full" in refused.value.iq["error"]["text"]
    # Removing one makes room for another.
    await v.del_roster_item(friends[0].jid)
    await v.update_roster(friends[MAX_ROSTER].jid, name="now there is room", timeout=10)
    # Approving a stored request changes a row already there: allowed.
    v.send_presence(pto=strangers[0].jid, ptype="subscribed")
    await fans[0].wait_presence(lambda p: p["type"] == "subscribed", what="approval of a stored request")
    items = await server_roster(v)
    # fan1's unanswered request is held too, but is no roster item to show.
    assert set(items) == {friends[1].jid, friends[2].jid, friends[MAX_ROSTER].jid, strangers[0].jid}, items
    assert items[strangers[0].jid]["subscription"] == "from"


# ---- final check ----------------------------------------------------------------------

async def test_server_survived_everything(bad_server, canary, pool):
    assert bad_server.alive()
    rss = bad_server.rss_mb()
    assert rss < RSS_LIMIT_MB, f"RSS {rss:.0f} MB"
    assert not canary.failures, canary.failures
    assert canary.rounds > 10, f"canary completed only {canary.rounds} rounds"
    assert canary.max_rtt < 5, f"slowest canary round trip {canary.max_rtt:.1f}s"
    # a brand-new user can still sign in and talk
    acct = await pool.account("late")
    c = await pool.connect(acct)
    await c.plugin["xep_0199"].ping(jid="localhost", timeout=10)



async def test_a_session_holds_its_connection_slot_until_it_ends(server_factory, backend):
    """`limits.max_connections_per_ip`: a connection counts against its address
    for as long as its session lives, not only while it negotiates, and the
    session's end frees the slot for the next one."""
    srv = server_factory.start("slot", backend, {"limits": {"max_connections_per_ip": 1}})
    try:
        name, password = unique_name("slot"), unique_password()
        await srv.aadd_user(name, password)
        first = await RawStream.connect(srv)
        await first.login(name, password)
        await asyncio.sleep(0.5)
        # The address's one slot is the bound session's: a second connection is
        # closed before the server says anything.
        second = await RawStream.connect(srv)
        try:
            await second.send(f"<?xml version='1.0'?><stream:stream to='{srv.domain}' version='1.0' "
                              "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        except StreamClosed:
            pass
        assert await second.wait_closed(timeout=10), "a second connection got past a limit of one"
        assert second.header is None, "the refused connection was answered with a stream"
        second.close()
        # The session ends: its slot goes back, and the next login succeeds.
        await first.send("</stream:stream>")
        assert await first.wait_closed(timeout=10)
        first.close()
        deadline = time.monotonic() + 10
        while True:
            third = await RawStream.connect(srv)
            try:
                jid = await third.login(name, password)
                break
            except (StreamClosed, AssertionError, asyncio.TimeoutError):
                third.close()
                assert time.monotonic() < deadline, "the ended session's slot never came back"
                await asyncio.sleep(0.2)
        assert jid.startswith(f"{name}@")
        third.close()
    finally:
        server_factory.stop(srv)
