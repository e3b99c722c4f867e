"""RFC 6120 (XMPP Core) and XEP-0368 (direct TLS): TLS, SASL, resource binding, stream basics.

Logins use slixmpp; byte-level checks (stream header, offered features) use the
raw stream helper.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import xml.etree.ElementTree as ET

import pytest

from kithtest.raw import NS_BIND, NS_CLIENT, NS_SASL, NS_TLS, RawStream, local, sasl_condition, tls_context
from kithtest.server import free_port
from kithtest.xmpp import ClientPool, LoginFailed, iq_error_condition

MECHS = ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
TRANSPORTS = ["starttls", "direct-tls"]


def mechanisms_of(features) -> list[str]:
    mechs = features.find(f"{{{NS_SASL}}}mechanisms")
    if mechs is None:
        return []
    return [m.text for m in mechs.findall(f"{{{NS_SASL}}}mechanism")]


# ---- TLS ---------------------------------------------------------------------

async def test_starttls_is_offered_and_required_before_anything_else(server):
    s = await RawStream.connect(server)
    try:
        features = await s.open()
        header = s.header
        assert header.get("from") == server.domain, header
        assert header.get("version") == "1.0", header
        assert header.get("id"), "stream header has no id"
        starttls = features.find(f"{{{NS_TLS}}}starttls")
        assert starttls is not None, "STARTTLS not offered on the c2s port"
        assert starttls.find(f"{{{NS_TLS}}}required") is not None, "STARTTLS not marked <required/>"
        assert "PLAIN" not in mechanisms_of(features), "PLAIN offered before TLS"
        await s.starttls()
        features = await s.open()
        assert features.find(f"{{{NS_TLS}}}starttls") is None, "STARTTLS offered again inside TLS"
        mechs = mechanisms_of(features)
        for m in MECHS:
            assert m in mechs, f"{m} not offered after TLS (offered: {mechs})"
    finally:
        s.close()


async def test_direct_tls_port_speaks_tls_and_offers_sasl(server):
    s = await RawStream.connect(server, direct_tls=True)
    try:
        features = await s.open()
        assert s.header.get("from") == server.domain
        assert features.find(f"{{{NS_TLS}}}starttls") is None, "STARTTLS offered on the direct TLS port"
        mechs = mechanisms_of(features)
        for m in MECHS:
            assert m in mechs, f"{m} not offered on direct TLS (offered: {mechs})"
    finally:
        s.close()


@pytest.mark.parametrize("port_attr", ["c2s_tls_port", "https_port"])
@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_certificate_verifies_against_generated_ca(server, port_attr, name):
    """The generated certificate chains to DATA_DIR/tls/ca.pem and names localhost and 127.0.0.1."""
    ctx = tls_context(server.ca_path)
    port = getattr(server, port_attr)
    with socket.create_connection((server.host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version()


def test_tls_rejects_an_unknown_ca(server, tmp_path):
    """Sanity check of the trust setup: without the kith CA, verification must fail."""
    ctx = ssl.create_default_context()  # system roots only
    with socket.create_connection((server.host, server.c2s_tls_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            with ctx.wrap_socket(raw, server_hostname=server.domain):
                pass


# ---- SASL --------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mech", MECHS)
async def test_login_with_each_mechanism(xmpp, mech, transport):
    acct = await xmpp.account("login")
    c = await xmpp.connect(acct, mech=mech, direct_tls=(transport == "direct-tls"), resource="phone")
    assert c.boundjid.bare == acct.jid
    assert c.boundjid.resource == "phone"
    assert c.plugin["feature_mechanisms"].mech.name == mech
    # the session really works: the server answers a ping
    await c.plugin["xep_0199"].ping(jid=c.boundjid.domain, timeout=10)


@pytest.mark.parametrize("mech", MECHS)
async def test_wrong_password_refused(xmpp, mech):
    acct = await xmpp.account("wrongpw")
    with pytest.raises(LoginFailed):
        await xmpp.connect(acct, password=acct.password + "x", mech=mech, timeout=20)
    c = xmpp.clients[-1]
    assert c.sasl_failure_conditions, "no SASL <failure/> received"
    assert c.sasl_failure_conditions[0] == "not-authorized", c.sasl_failure_conditions
    # and the right password still works afterwards
    ok = await xmpp.connect(acct, mech=mech)
    assert ok.boundjid.bare == acct.jid


async def test_unknown_user_refused_like_a_wrong_password(xmpp):
    with pytest.raises(LoginFailed):
        await xmpp.connect("nosuchuser-zz9@localhost", password="whatever")
    conds = xmpp.clients[-1].sasl_failure_conditions
    # slixmpp retries with each offered mechanism; every attempt must fail the same way
    assert conds and set(conds) == {"not-authorized"}, conds


async def test_plain_authzid_cannot_impersonate_another_user(server, xmpp):
    victim = await xmpp.account("victim")
    attacker = await xmpp.account("attacker")
    s = await RawStream.connect(server)
    try:
        await s.secure()
        el = await s.auth_plain(attacker.name, attacker.password, authzid=victim.jid)
        if local(el.tag) == "failure":
            assert sasl_condition(el) in ("invalid-authzid", "not-authorized"), sasl_condition(el)
        else:
            s._reset_parser()
            await s.open()
            jid = await s.bind("x")
            assert jid.split("/")[0] == attacker.jid, f"PLAIN authzid let {attacker.jid} become {jid}"
    finally:
        s.close()


async def test_stanza_before_tls_is_not_processed(server, xmpp):
    rcpt = await xmpp.account("pretls")
    c = await xmpp.connect(rcpt)
    s = await RawStream.connect(server)
    try:
        await s.open()
        await s.send(f"<message to='{rcpt.jid}' type='chat'><body>before tls</body></message>")
        cond = await s.stream_error(10)
        assert cond is None or cond[0] in ("not-authorized", "policy-violation"), cond
        assert await s.wait_closed(10), "server kept the stream open"
    finally:
        s.close()
    await asyncio.sleep(0.5)
    assert not c.matching(lambda st: st.xml.findtext("{jabber:client}body") == "before tls"), \
        "a stanza sent before STARTTLS was delivered"


async def test_stream_to_unknown_host_is_refused(server):
    s = await RawStream.connect(server)
    try:
        await s.send("<?xml version='1.0'?><stream:stream to='example.org' version='1.0' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        cond = await s.stream_error(10)
        assert cond == ["host-unknown"], cond
        assert await s.wait_closed(10)
    finally:
        s.close()


@pytest.mark.parametrize("content", ["jabber:server", "urn:example:other", None])
async def test_stream_in_another_content_namespace_is_invalid_namespace(server, content):
    # RFC 6120 §4.9.3.10: a client's stream must declare jabber:client.
    declared = f"xmlns='{content}' " if content else ""
    s = await RawStream.connect(server)
    try:
        await s.send("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                     f"{declared}xmlns:stream='http://etherx.jabber.org/streams'>")
        cond = await s.stream_error(10)
        assert cond == ["invalid-namespace"], cond
        assert await s.wait_closed(10)
    finally:
        s.close()


async def test_client_closing_stream_gets_closing_tag_back(server, xmpp):
    acct = await xmpp.account("closer")
    s = await RawStream.connect(server)
    try:
        await s.login(acct.name, acct.password, "r1")
        await s.send("</stream:stream>")
        deadline = asyncio.get_running_loop().time() + 10
        while not s.stream_ended and asyncio.get_running_loop().time() < deadline:
            try:
                await s.next(1)
            except Exception:
                break
        assert s.stream_ended, "server did not answer </stream:stream> with its own closing tag"
        assert await s.wait_closed(10), "server did not close the TCP connection"
    finally:
        s.close()


# ---- resource binding ---------------------------------------------------------

async def test_server_generated_resource(xmpp):
    acct = await xmpp.account("genres")
    c1 = await xmpp.connect(acct, resource=None)
    c2 = await xmpp.connect(acct, resource=None)
    assert c1.boundjid.bare == acct.jid and c2.boundjid.bare == acct.jid
    assert c1.boundjid.resource, "server did not generate a resource"
    assert c2.boundjid.resource, "server did not generate a resource"
    assert c1.boundjid.resource != c2.boundjid.resource, "two sessions got the same generated resource"


async def test_requested_resource_is_honoured_with_unicode(xmpp):
    acct = await xmpp.account("unires")
    c = await xmpp.connect(acct, resource="Laptöp – Café ♥ 電話")
    assert c.boundjid.resource == "Laptöp – Café ♥ 電話"


async def test_resource_conflict(xmpp):
    """RFC 6120 §7.7.2.2: a second bind of an in-use resource is either refused,
    given another resource, or replaces the old session (which then gets a
    <conflict/> stream error). Whatever the policy, exactly one live session
    per full JID, and messages to that full JID reach it."""
    acct = await xmpp.account("conflict")
    peer_acct = await xmpp.account("cpeer")
    peer = await xmpp.connect(peer_acct)
    first = await xmpp.connect(acct, resource="same")
    second = xmpp.make(acct, resource="same")
    xmpp.start(second)
    try:
        await second.wait_session(20)
        second_ok = True
    except LoginFailed:
        second_ok = False
    await asyncio.sleep(1.0)
    if not second_ok:
        # policy (b): new session refused; the first one must be untouched
        assert first.connected_now, "new bind refused AND old session dropped"
        target = first
    elif second.boundjid.resource != "same":
        # policy (c): a different resource was assigned; both sessions live
        assert first.connected_now and second.connected_now
        target = first
    else:
        # policy (a): the old session is replaced and told why
        assert await first.wait_closed(10), "two live sessions share one full JID"
        assert [e["condition"] for e in first.stream_errors] == ["conflict"], first.stream_errors
        target = second
    peer.send_message(mto=f"{acct.jid}/same", mbody="who has it?", mtype="chat")
    msg = await target.wait_message(lambda m: m["body"] == "who has it?")
    assert msg["from"] == peer.boundjid


async def test_unknown_iq_namespace_gets_service_unavailable(xmpp):
    acct = await xmpp.account("unkiq")
    c = await xmpp.connect(acct)
    iq = c.make_iq_get(ito=c.boundjid.domain)
    iq.append(ET.Element("{urn:example:no-such-protocol}query"))
    with pytest.raises(Exception) as info:
        await iq.send(timeout=10)
    assert iq_error_condition(info.value) in ("service-unavailable", "feature-not-implemented"), info.value


async def test_stream_features_after_auth_offer_bind(server, xmpp):
    acct = await xmpp.account("feat")
    s = await RawStream.connect(server)
    try:
        await s.secure()
        el = await s.auth_plain(acct.name, acct.password)
        assert local(el.tag) == "success", el
        s._reset_parser()
        features = await s.open()
        assert features.find(f"{{{NS_BIND}}}bind") is not None, "no <bind/> after authentication"
        assert features.find(f"{{{NS_SASL}}}mechanisms") is None, "SASL offered again after success"
    finally:
        s.close()


# ---- liveness (XEP-0199 §4.1 client-to-server ping) -----------------------------


async def test_a_silent_client_is_pinged_then_timed_out_and_one_that_answers_stays(server_factory, backend):
    srv = server_factory.start("idle", backend, {"limits": {"idle_timeout_secs": 1}})
    pool = ClientPool(srv)
    raw = None
    try:
        answering, silent = await pool.account("ida"), await pool.account("idb")
        a = await pool.connect(answering)  # slixmpp answers pings
        raw = await RawStream.connect(srv)
        await raw.login(silent.name, silent.password)
        started = time.monotonic()
        ping = await raw.next(timeout=5)
        while ping.tag != f"{{{NS_CLIENT}}}iq":  # its own presence comes back first
            ping = await raw.next(timeout=5)
        assert ping.get("type") == "get" and ping.find("{urn:xmpp:ping}ping") is not None, ET.tostring(ping)
        # Not answered: the stream ends after the wait for an answer.
        assert await raw.stream_error(timeout=5) == ["connection-timeout"]
        assert 1.0 <= time.monotonic() - started <= 4.5
        # The client that answers is still served after several idle periods.
        await asyncio.sleep(3.5)
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        assert a.connected_now
    finally:
        if raw is not None:
            raw.close()
        await pool.close_all()
        server_factory.stop(srv)


# ---- c2s without TLS (listen.c2s_plain) -------------------------------------------


async def test_the_plain_listener_serves_without_tls_and_never_offers_plain(server_factory, backend):
    port = free_port()
    srv = server_factory.start("plain", backend, {"listen": {"c2s_plain": f"127.0.0.1:{port}"}})
    pool = ClientPool(srv)
    raw = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = RawStream(srv, reader, writer, False)
        features = await raw.open()
        # RFC 6120 §13.8: no PLAIN without TLS; and this port has no TLS to offer.
        assert features.find(f"{{{NS_TLS}}}starttls") is None
        assert sorted(mechanisms_of(features)) == ["SCRAM-SHA-1", "SCRAM-SHA-256"]
        await raw.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGEAYg==</auth>")
        failure = await raw.next()
        assert local(failure.tag) == "failure", ET.tostring(failure)

        alice, bob = await pool.account("pla"), await pool.account("plb")
        b = await pool.connect(bob)  # over STARTTLS
        a = pool.make(alice)
        a.enable_starttls, a.enable_direct_tls, a.enable_plaintext = False, False, True
        a.plugin["feature_mechanisms"].unencrypted_scram = True  # slixmpp's default is TLS or nothing
        a.connect(srv.host, port)
        await a.wait_session(10)
        a.send_presence()
        a.send_message(mto=bob.jid, mbody="no tls on this hop", mtype="chat")
        got = await b.wait_message(lambda m: m["body"] == "no tls on this hop", timeout=10)
        assert got["from"].bare == alice.jid
    finally:
        if raw is not None:
            raw.close()
        await pool.close_all()
        server_factory.stop(srv)
