"""`[archive] enabled = false`: a server without a 1:1 message archive, like
ejabberd without mod_mam. The inbox log still delivers every message (live, and
later to a device that was offline, with its XEP-0203 delay), but the server
advertises no XEP-0313 archive and no XEP-0359 stanza ids, refuses archive
queries as an unsupported namespace, and stamps no ids on what it delivers.

Clients are slixmpp (its xep_0030 and xep_0313 plugins), as elsewhere in the suite.
"""

from __future__ import annotations

import asyncio
import signal

import pytest
import pytest_asyncio
from slixmpp.exceptions import IqError

from kithtest.xmpp import DEFAULT_PLUGINS, NS_SID, ClientPool, iq_error_condition

NS_MAM = "urn:xmpp:mam:2"
NS_DELAY = "urn:xmpp:delay"
PLUGINS = DEFAULT_PLUGINS + ("xep_0313",)


@pytest.fixture(scope="module")
def no_archive_server(backend, server_factory):
    srv = server_factory.start("noarchive", backend, {"archive": {"enabled": False}})
    yield srv
    server_factory.stop(srv)


@pytest_asyncio.fixture
async def xmpp(no_archive_server):
    pool = ClientPool(no_archive_server)
    yield pool
    await pool.close_all()


async def test_no_archive_is_advertised(xmpp):
    acct = await xmpp.account("noarchdisco")
    c = await xmpp.connect(acct, plugins=PLUGINS)
    server_info = await c.plugin["xep_0030"].get_info(jid=c.boundjid.domain, timeout=10)
    server_features = set(server_info["disco_info"]["features"])
    assert NS_SID not in server_features, server_features
    # Everything else the server does is still there.
    assert "urn:xmpp:sm:3" in server_features and "msgoffline" in server_features
    account_info = await c.plugin["xep_0030"].get_info(jid=acct.jid, timeout=10)
    account_features = set(account_info["disco_info"]["features"])
    assert not any(f.startswith(NS_MAM) for f in account_features), account_features


async def test_archive_queries_are_refused(xmpp):
    acct = await xmpp.account("noarchquery")
    c = await xmpp.connect(acct, plugins=PLUGINS)
    with pytest.raises(IqError) as err:
        await c.plugin["xep_0313"].get_fields(timeout=10)
    assert iq_error_condition(err.value) == "service-unavailable"
    with pytest.raises(IqError) as err:
        await c.plugin["xep_0313"].get_archive_metadata(timeout=10)
    assert iq_error_condition(err.value) == "service-unavailable"
    # The session goes on.
    await c.get_roster(timeout=10)


async def test_messages_are_still_delivered_live_and_later(xmpp):
    alice_acct, bob_acct = await xmpp.account("noarcha"), await xmpp.account("noarchb")
    alice = await xmpp.connect(alice_acct)
    bob = await xmpp.connect(bob_acct, resource="phone")

    alice.send_message(mto=bob_acct.jid, mbody="live one", mtype="chat")
    live = await bob.wait_message(lambda m: m["body"] == "live one")
    assert live.xml.find(f"{{{NS_SID}}}stanza-id") is None, "a stanza id without an archive"

    # bob's phone goes away; what alice sends meanwhile waits in the log.
    await bob.close()
    for i in range(3):
        alice.send_message(mto=bob_acct.jid, mbody=f"while away {i}", mtype="chat")
    await asyncio.sleep(0.5)
    bob = await xmpp.connect(bob_acct, resource="phone")
    for i in range(3):
        late = await bob.wait_message(lambda m, i=i: m["body"] == f"while away {i}")
        assert late.xml.find(f"{{{NS_DELAY}}}delay") is not None, "no XEP-0203 delay on a late message"
        assert late.xml.find(f"{{{NS_SID}}}stanza-id") is None
        assert late["from"].bare == alice_acct.jid
    # Delivered once: the live message is not sent again at login.
    await asyncio.sleep(0.3)
    assert not bob.matching(lambda m: getattr(m, "name", "") == "message" and m["body"] == "live one")


async def test_a_device_away_gets_what_another_was_sent_across_a_crash(server_factory, backend):
    """Without an archive, a message for a user with a session waits in the
    log's tail (SQLite) until every device has it: a second device that was away
    still gets it — soon after, and after the server was killed and restarted."""
    srv = server_factory.start("noarchcrash", backend, {"archive": {"enabled": False}})
    pool = ClientPool(srv)
    try:
        alice_acct, bob_acct = await pool.account("tla"), await pool.account("tlb")
        # bob's laptop is a known device, away; his phone is online throughout.
        laptop = await pool.connect(bob_acct, resource="laptop")
        await laptop.close()
        phone = await pool.connect(bob_acct, resource="phone")
        alice = await pool.connect(alice_acct, resource="desk", plugins=DEFAULT_PLUGINS + ("xep_0198",))
        sm = alice.plugin["xep_0198"]
        await asyncio.sleep(0.5)
        assert sm.enabled_out, "stream management was not enabled"

        async def send_acked(bodies: list[str]) -> None:
            for body in bodies:
                alice.send_message(mto=bob_acct.jid, mbody=body, mtype="chat")
            for _ in range(50):
                sm.request_ack()
                await asyncio.sleep(0.1)
                if not any(st.name == "message" for _seq, st in list(sm.unacked_queue)):
                    return
            raise AssertionError("alice's messages were not acknowledged")

        def bodies_of(client, prefix: str) -> list[str]:
            return [
                s["body"]
                for s in client.matching(lambda s: getattr(s, "name", "") == "message" and s["body"].startswith(prefix))
            ]

        first = [f"first #{i:02d}" for i in range(30)]
        await send_acked(first)
        await phone.wait_message(lambda m: m["body"] == first[-1])
        # The laptop comes back at once: the messages are still in the tail.
        laptop = await pool.connect(bob_acct, resource="laptop")
        await laptop.wait_message(lambda m: m["body"] == first[-1])
        await asyncio.sleep(0.3)
        assert bodies_of(laptop, "first #") == first, "the away device missed or repeated some"
        await laptop.close()

        second = [f"second #{i:02d}" for i in range(30)]
        await send_acked(second)
        await phone.wait_message(lambda m: m["body"] == second[-1])
        # Killed while they wait in the tail (well within its 3 s).
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        await pool.close_all()
        srv.proc = None
        await asyncio.to_thread(srv.start)

        laptop = await pool.connect(bob_acct, resource="laptop")
        await laptop.wait_message(lambda m: m["body"] == second[-1], timeout=15)
        await asyncio.sleep(0.5)
        assert bodies_of(laptop, "second #") == second, "lost or repeated across the crash"
        assert not bodies_of(laptop, "first #"), "what the laptop had came again"
    finally:
        await pool.close_all()
        server_factory.stop(srv)
