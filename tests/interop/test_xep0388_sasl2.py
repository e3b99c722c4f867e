"""The modern login: XEP-0388 SASL2 with XEP-0386 Bind 2, XEP-0198 inline
(enable and resume) and XEP-0484 FAST tokens (HT-SHA-256-NONE).

The third-party client is xmpp.js (@xmpp/client over WebSocket with TLS),
which uses all four when the server offers them; byte-level checks use the raw
stream helper.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import uuid
import xml.etree.ElementTree as ET

from kithtest.raw import NS_CLIENT, NS_SASL, NS_STREAM, RawStream, local
from kithtest.xmpp import ClientPool
from test_rfc7395_websocket import http_up, run_xmpp_js  # noqa: F401 (fixture)

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
NS_SM = "urn:xmpp:sm:3"
NS_CARBONS = "urn:xmpp:carbons:2"
HT = "HT-SHA-256-NONE"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ht_initiator(user: str, token: str) -> bytes:
    """draft-schmaus-kitten-sasl-ht: authcid NUL HMAC(token, "Initiator")."""
    return user.encode() + b"\0" + hmac.new(token.encode(), b"Initiator", hashlib.sha256).digest()


async def authenticate(s: RawStream, mechanism: str, initial: bytes, inline: str = "",
                       agent: str | None = None) -> ET.Element:
    ua = f"<user-agent id='{agent}'><software>kith tests</software></user-agent>" if agent else ""
    await s.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>"
                 f"<initial-response>{b64(initial)}</initial-response>{ua}{inline}</authenticate>")
    el = await s.next(15)
    assert el.tag in (f"{{{NS_SASL2}}}success", f"{{{NS_SASL2}}}failure"), ET.tostring(el, encoding="unicode")
    return el


def failure_condition(el: ET.Element) -> str | None:
    assert el.tag == f"{{{NS_SASL2}}}failure", ET.tostring(el, encoding="unicode")
    return next((local(c.tag) for c in el if c.tag.startswith(f"{{{NS_SASL}}}")), None)


async def test_sasl2_is_offered_after_tls_with_its_inline_features(server):
    s = await RawStream.connect(server)
    before = await s.open()
    assert before.find(f"{{{NS_SASL2}}}authentication") is None, "SASL2 before TLS (XEP-0388 §3)"
    await s.starttls()
    features = await s.open()
    auth = features.find(f"{{{NS_SASL2}}}authentication")
    assert auth is not None
    assert [m.text for m in auth.findall(f"{{{NS_SASL2}}}mechanism")] == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    inline = auth.find(f"{{{NS_SASL2}}}inline")
    bind = inline.find(f"{{{NS_BIND2}}}bind")
    assert {f.get("var") for f in bind.iter(f"{{{NS_BIND2}}}feature")} == {NS_CARBONS, "urn:xmpp:csi:0", NS_SM}
    assert inline.find(f"{{{NS_SM}}}sm") is not None
    assert [m.text for m in inline.find(f"{{{NS_FAST}}}fast")] == [HT]
    s.close()


async def test_one_exchange_binds_enables_and_resumes_with_a_token(server, xmpp):
    acct, peer = await xmpp.account("s2"), await xmpp.account("s2peer")
    agent = str(uuid.uuid4())
    s = await RawStream.connect(server)
    await s.secure()
    success = await authenticate(
        s, "PLAIN", f"\0{acct.name}\0{acct.password}".encode(), agent=agent,
        inline=f"<bind xmlns='{NS_BIND2}'><tag>raw</tag><enable xmlns='{NS_SM}' resume='true'/>"
               f"<enable xmlns='{NS_CARBONS}'/></bind>"
               f"<request-token xmlns='{NS_FAST}' mechanism='{HT}'/>")
    assert success.tag == f"{{{NS_SASL2}}}success", ET.tostring(success, encoding="unicode")
    jid = success.findtext(f"{{{NS_SASL2}}}authorization-identifier")
    assert jid.startswith(f"{acct.jid}/raw/"), jid
    bound = success.find(f"{{{NS_BIND2}}}bound")
    assert bound.find("{urn:xmpp:mam:2}metadata") is not None
    enabled = bound.find(f"{{{NS_SM}}}enabled")
    assert enabled is not None and enabled.get("resume") == "true" and enabled.get("id")
    token = success.find(f"{{{NS_FAST}}}token")
    expiry = datetime.datetime.fromisoformat(token.get("expiry").replace("Z", "+00:00"))
    assert expiry > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    # XEP-0388 §2.6.1: features follow at once, with no stream restart; bound and
    # managed already, so neither binding nor stream management is offered.
    features = await s.next()
    assert features.tag == f"{{{NS_STREAM}}}features"
    assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is None
    assert features.find(f"{{{NS_SM}}}sm") is None

    # Live, with carbons on and stream management counting.
    await s.send("<presence/>")
    other = await xmpp.connect(acct, resource="desk")
    other.send_message(mto=peer.jid, mbody="sent from the desk", mtype="chat")
    while True:
        el = await s.next()
        if el.tag == f"{{{NS_CLIENT}}}message" and el.find(f"{{{NS_CARBONS}}}sent") is not None:
            break
    await s.send(f"<r xmlns='{NS_SM}'/>")
    while (el := await s.next()).tag != f"{{{NS_SM}}}a":
        pass
    assert int(el.get("h")) == 1, "the presence, counted from the first stanza"

    # The connection drops; a message arrives meanwhile; the client comes back
    # with its token and resumes in the same exchange.
    s.writer.transport.abort()
    peer_c = await xmpp.connect(peer, resource="p")
    peer_c.send_message(mto=jid, mbody="while you were away", mtype="chat")
    s2 = await RawStream.connect(server)
    await s2.secure()
    success = await authenticate(
        s2, HT, ht_initiator(acct.name, token.get("token")), agent=agent,
        inline=f"<fast xmlns='{NS_FAST}'/><resume xmlns='{NS_SM}' previd='{enabled.get('id')}' h='0'/>"
               f"<bind xmlns='{NS_BIND2}'><tag>raw</tag></bind>")
    assert success.tag == f"{{{NS_SASL2}}}success", ET.tostring(success, encoding="unicode")
    # Mutual authentication: the server proves it knows the token too.
    responder = hmac.new(token.get("token").encode(), b"Responder", hashlib.sha256).digest()
    assert success.findtext(f"{{{NS_SASL2}}}additional-data") == b64(responder)
    assert success.findtext(f"{{{NS_SASL2}}}authorization-identifier") == jid
    resumed = success.find(f"{{{NS_SM}}}resumed")
    assert resumed is not None and resumed.get("previd") == enabled.get("id")
    assert success.find(f"{{{NS_BIND2}}}bound") is None, "a resumption ignores the bind (XEP-0386 §3.2)"
    # XEP-0198 §9.2: no stream features after a resumption; what the client
    # had not acknowledged comes again, the message from while it was away too.
    while True:
        el = await s2.next()
        assert el.tag != f"{{{NS_STREAM}}}features"
        if el.tag == f"{{{NS_CLIENT}}}message" and el.findtext(f"{{{NS_CLIENT}}}body") == "while you were away":
            break
    s2.close()


async def test_a_new_login_of_a_client_ends_its_session_waiting_to_be_resumed(server, xmpp):
    acct, peer = await xmpp.account("s2again"), await xmpp.account("s2againpeer")
    agent = str(uuid.uuid4())
    plain = f"\0{acct.name}\0{acct.password}".encode()
    bind = f"<bind xmlns='{NS_BIND2}'><tag>raw</tag><enable xmlns='{NS_SM}' resume='true'/></bind>"
    s = await RawStream.connect(server)
    await s.secure()
    first = await authenticate(s, "PLAIN", plain, agent=agent, inline=bind)
    old_id = first.find(f"{{{NS_BIND2}}}bound/{{{NS_SM}}}enabled").get("id")
    jid = first.findtext(f"{{{NS_SASL2}}}authorization-identifier")
    await s.send("<presence/>")
    # The connection drops: the session waits to be resumed (XEP-0198 §5).
    s.writer.transport.abort()
    await asyncio.sleep(0.3)
    # The same client signs in afresh rather than resuming: Bind 2 gives it the
    # same resource and replaces the session waiting there (XEP-0386 §2.4).
    s2 = await RawStream.connect(server)
    await s2.secure()
    second = await authenticate(s2, "PLAIN", plain, agent=agent, inline=bind)
    assert second.findtext(f"{{{NS_SASL2}}}authorization-identifier") == jid
    new_id = second.find(f"{{{NS_BIND2}}}bound/{{{NS_SM}}}enabled").get("id")
    assert new_id != old_id
    await asyncio.sleep(0.3)
    # The replaced session is gone at once, not at the end of its window: its
    # id no longer resumes (it would bring back a session nobody routes to).
    s3 = await RawStream.connect(server)
    await s3.secure()
    third = await authenticate(s3, "PLAIN", plain, agent=agent,
                               inline=f"<resume xmlns='{NS_SM}' previd='{old_id}' h='0'/>")
    assert third.tag == f"{{{NS_SASL2}}}success", ET.tostring(third, encoding="unicode")
    assert third.find(f"{{{NS_SM}}}resumed") is None, ET.tostring(third, encoding="unicode")
    failed = third.find(f"{{{NS_SM}}}failed")
    assert failed is not None and failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    s3.close()
    # The new session is the one messages reach.
    await s2.send("<presence/>")
    peer_c = await xmpp.connect(peer, resource="p")
    peer_c.send_message(mto=jid, mbody="to the new session", mtype="chat")
    while True:
        el = await s2.next()
        if el.tag == f"{{{NS_CLIENT}}}message" and el.findtext(f"{{{NS_CLIENT}}}body") == "to the new session":
            break
    s2.close()


async def test_failures_leave_the_stream_usable(server, xmpp):
    acct = await xmpp.account("s2fail")
    agent = str(uuid.uuid4())
    s = await RawStream.connect(server)
    await s.secure()
    bad = await authenticate(s, "PLAIN", f"\0{acct.name}\0wrong".encode(), agent=agent)
    assert failure_condition(bad) == "not-authorized"
    forged = await authenticate(s, HT, ht_initiator(acct.name, "a-token-never-issued"), agent=agent,
                                inline=f"<fast xmlns='{NS_FAST}'/>")
    assert failure_condition(forged) == "not-authorized"
    # FAST tokens belong to a client: a login with one must say which (XEP-0484 §4).
    anonymous = await authenticate(s, HT, ht_initiator(acct.name, "x"), inline=f"<fast xmlns='{NS_FAST}'/>")
    assert failure_condition(anonymous) == "malformed-request"
    unknown = await authenticate(s, "X-UNKNOWN", b"", agent=agent)
    assert failure_condition(unknown) == "invalid-mechanism"
    good = await authenticate(s, "PLAIN", f"\0{acct.name}\0{acct.password}".encode(), agent=agent)
    assert good.tag == f"{{{NS_SASL2}}}success"
    s.close()


async def test_a_password_change_ends_fast_tokens(server, xmpp):
    acct = await xmpp.account("s2pw")
    agent = str(uuid.uuid4())
    s = await RawStream.connect(server)
    await s.secure()
    success = await authenticate(s, "PLAIN", f"\0{acct.name}\0{acct.password}".encode(), agent=agent,
                                 inline=f"<request-token xmlns='{NS_FAST}' mechanism='{HT}'/>")
    token = success.find(f"{{{NS_FAST}}}token").get("token")
    # Without a bind the identifier is the bare JID, and the features that
    # follow offer the classic bind on the same stream.
    assert success.findtext(f"{{{NS_SASL2}}}authorization-identifier") == acct.jid
    features = await s.next()
    assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    await s.bind("classic")
    # The token works, once more on a new connection...
    s2 = await RawStream.connect(server)
    await s2.secure()
    ok = await authenticate(s2, HT, ht_initiator(acct.jid, token), agent=agent, inline=f"<fast xmlns='{NS_FAST}'/>")
    assert ok.tag == f"{{{NS_SASL2}}}success"
    s2.close()
    # ...until the password changes (XEP-0077 §3.3).
    await s.send(f"<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>{acct.name}</username>"
                 f"<password>a-new-password-1</password></query></iq>")
    while (el := await s.next()).tag != f"{{{NS_CLIENT}}}iq":
        pass
    assert el.get("type") == "result", ET.tostring(el, encoding="unicode")
    s3 = await RawStream.connect(server)
    await s3.secure()
    refused = await authenticate(s3, HT, ht_initiator(acct.name, token), agent=agent, inline=f"<fast xmlns='{NS_FAST}'/>")
    assert failure_condition(refused) == "not-authorized"
    s3.close()
    s.close()


def expiry_of(token: ET.Element) -> datetime.datetime:
    return datetime.datetime.fromisoformat(token.get("expiry").replace("Z", "+00:00"))


async def test_fast_logins_alone_end_a_set_time_after_the_password_login(backend, server_factory):
    # A token renewed at every FAST login could otherwise be used for ever,
    # by whoever stole one; `fast_chain_secs` bounds the chain.
    srv = server_factory.start("fastchain", backend, {"limits": {"fast_chain_secs": 4}})
    pool = ClientPool(srv)
    try:
        acct = await pool.account("chain")
        agent = str(uuid.uuid4())
        password = f"\0{acct.name}\0{acct.password}".encode()
        request = f"<request-token xmlns='{NS_FAST}' mechanism='{HT}'/>"

        async def login(mechanism: str, initial: bytes, inline: str) -> ET.Element:
            s = await RawStream.connect(srv)
            await s.secure()
            try:
                return await authenticate(s, mechanism, initial, agent=agent, inline=inline)
            finally:
                s.close()

        now = datetime.datetime.now(datetime.timezone.utc)
        first = (await login("PLAIN", password, request)).find(f"{{{NS_FAST}}}token")
        assert expiry_of(first) <= now + datetime.timedelta(seconds=5), first.get("expiry")
        # A FAST login gets a new token, but one that ends with the chain.
        renewed = await login(HT, ht_initiator(acct.name, first.get("token")), f"<fast xmlns='{NS_FAST}'/>{request}")
        second = renewed.find(f"{{{NS_FAST}}}token")
        assert second.get("token") != first.get("token")
        assert second.get("expiry") == first.get("expiry")
        await asyncio.sleep((expiry_of(second) - datetime.datetime.now(datetime.timezone.utc)).total_seconds() + 0.5)
        refused = await login(HT, ht_initiator(acct.name, second.get("token")), f"<fast xmlns='{NS_FAST}'/>")
        assert failure_condition(refused) == "credentials-expired"
        # The password starts a new chain.
        third = (await login("PLAIN", password, request)).find(f"{{{NS_FAST}}}token")
        assert expiry_of(third) > expiry_of(second)
        ok = await login(HT, ht_initiator(acct.name, third.get("token")), f"<fast xmlns='{NS_FAST}'/>")
        assert ok.tag == f"{{{NS_SASL2}}}success", ET.tostring(ok, encoding="unicode")
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_xmpp_js_signs_in_with_sasl2_and_then_with_its_fast_token(http_up, xmpp):
    server = http_up
    web, peer = await xmpp.account("js"), await xmpp.account("jspeer")
    agent = str(uuid.uuid4())
    tcp = await xmpp.connect(peer, resource="desk")

    def echo(msg):
        if (msg["body"] or "").startswith("ping "):
            tcp.send_message(mto=msg["from"], mbody="pong " + msg["body"][5:], mtype="chat")

    tcp.add_event_handler("message", echo)
    cfg = {"username": web.name, "password": web.password, "resource": "phone", "peer": peer.jid,
           "user_agent_id": agent, "send_body": "ping 1", "expect_body": "pong 1"}
    first = await run_xmpp_js(server, server.wss_url, cfg)
    assert first["ok"], first
    assert "success urn:xmpp:sasl:2" in first["nonzas"], first
    assert first["sm"]["enabled"] and first["sm"]["id"], "stream management inline with Bind 2"
    assert first["token"] and first["token"]["mechanism"] == HT, "xmpp.js asks for a FAST token"
    # Next time: the token alone (the password given is wrong), the same resource.
    second = await run_xmpp_js(server, server.wss_url, {**cfg, "password": "wrong", "token": first["token"],
                                                         "send_body": "ping 2", "expect_body": "pong 2"})
    assert second["ok"], second
    assert second["jid"] == first["jid"], "the same client keeps its resource (XEP-0386 §3.2.1)"
    # A token that is not the server's fails, and the wrong password after it too.
    forged = {**first["token"], "token": "not-a-token-the-server-issued"}
    third = await run_xmpp_js(server, server.wss_url, {**cfg, "password": "wrong", "token": forged,
                                                        "send_body": "ping 3", "expect_body": "pong 3"},
                              timeout=15)
    assert not third["ok"] and third["jid"] is None, third
    assert any("not-authorized" in e for e in third["errors"]), third["errors"]
