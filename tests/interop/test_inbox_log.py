"""The inbox log (DESIGN.md): every device gets every message exactly once,
offline devices catch up on login, acknowledged messages survive a crash
(XEP-0198 stream management, XEP-0280 carbons)."""

from __future__ import annotations

import asyncio
import signal

from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool

SM_PLUGINS = DEFAULT_PLUGINS + ("xep_0198",)
CARBON_PLUGINS = DEFAULT_PLUGINS + ("xep_0280",)


async def test_two_offline_devices_each_get_everything_new_device_gets_none(xmpp):
    alice, bob = await xmpp.account("ila"), await xmpp.account("ilb")
    # Bob's phone and laptop log in once, so both are known devices.
    for resource in ("phone", "laptop"):
        c = await xmpp.connect(bob, resource=resource)
        await c.close()
    a = await xmpp.connect(alice, resource="desk")
    bodies = [f"while you were out #{i}" for i in range(5)]
    for body in bodies:
        a.send_message(mto=bob.jid, mbody=body, mtype="chat")
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)

    for resource in ("phone", "laptop"):
        c = await xmpp.connect(bob, resource=resource)
        got = [await c.wait_message(lambda m, b=b: m["body"] == b, timeout=10) for b in bodies]
        order = [next(i for i, s in enumerate(c.received) if s is m) for m in got]
        assert order == sorted(order), f"{resource}: out of order"
        await asyncio.sleep(0.5)
        copies = [m for m in c.matching(lambda s: getattr(s, "name", "") == "message" and s["body"] in bodies)]
        assert len(copies) == len(bodies), f"{resource} got duplicates: {[m['body'] for m in copies]}"
        await c.close()

    tablet = await xmpp.connect(bob, resource="tablet")
    await asyncio.sleep(1.0)
    assert not tablet.matching(lambda s: getattr(s, "name", "") == "message" and s["body"] in bodies), \
        "a device that never logged in before got old messages as offline messages"


async def test_online_devices_all_receive_a_message_once(xmpp):
    alice, bob = await xmpp.account("ola"), await xmpp.account("olb")
    phone = await xmpp.connect(bob, resource="phone")
    laptop = await xmpp.connect(bob, resource="laptop")
    a = await xmpp.connect(alice)
    await asyncio.sleep(0.3)
    a.send_message(mto=bob.jid, mbody="to every device", mtype="chat")
    for c in (phone, laptop):
        await c.wait_message(lambda m: m["body"] == "to every device")
    # Reconnecting the same devices does not deliver it again.
    await phone.close()
    phone2 = await xmpp.connect(bob, resource="phone")
    await asyncio.sleep(1.0)
    assert not phone2.matching(lambda s: getattr(s, "name", "") == "message" and s["body"] == "to every device")


async def test_carbons_copy_sent_and_received_messages(xmpp):
    alice, bob = await xmpp.account("cba"), await xmpp.account("cbb")
    a1 = await xmpp.connect(alice, resource="one", plugins=CARBON_PLUGINS)
    a2 = await xmpp.connect(alice, resource="two", plugins=CARBON_PLUGINS)
    b = await xmpp.connect(bob, resource="b", plugins=CARBON_PLUGINS)
    for c in (a1, a2, b):
        await c.plugin["xep_0280"].enable(timeout=10)
    a1.send_message(mto=b.boundjid.full, mbody="sent from one", mtype="chat")
    await b.wait_message(lambda m: m["body"] == "sent from one")
    sent = await a2.wait_message(lambda m: m["carbon_sent"]["body"] == "sent from one", what="sent carbon")
    assert sent["from"].full == alice.jid, "a carbon must come from the user's bare JID"
    b.send_message(mto=a1.boundjid.full, mbody="reply to one", mtype="chat")
    await a1.wait_message(lambda m: m["body"] == "reply to one")
    got = await a2.wait_message(lambda m: m["carbon_received"]["body"] == "reply to one", what="received carbon")
    assert got["carbon_received"]["to"].full == a1.boundjid.full


async def test_acked_messages_survive_sigkill_exactly_once_in_order(server_factory, backend):
    srv = server_factory.start("crash", backend)
    pool = ClientPool(srv)
    try:
        alice, bob = await pool.account("kra"), await pool.account("krb")
        # Bob's device exists (logged in once) and is offline during the crash.
        b = await pool.connect(bob, resource="phone")
        await b.close()
        a = await pool.connect(alice, resource="desk", plugins=SM_PLUGINS)
        sm = a.plugin["xep_0198"]
        await asyncio.sleep(0.5)
        assert sm.enabled_out, "stream management was not enabled"
        bodies = [f"durable #{i:03d}" for i in range(60)]
        for i, body in enumerate(bodies):
            a.send_message(mto=bob.jid, mbody=body, mtype="chat")
            if i % 10 == 9:
                sm.request_ack()
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        # Kill the server without warning while messages may still be in flight.
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        unacked = {st["body"] for _seq, st in list(sm.unacked_queue) if st.name == "message"}
        acked = [b for b in bodies if b not in unacked]
        assert acked, "the server acknowledged nothing before the crash"
        await pool.close_all()
        srv.proc = None
        await asyncio.to_thread(srv.start)

        b = await pool.connect(bob, resource="phone")
        for body in acked:
            await b.wait_message(lambda m, body=body: m["body"] == body, timeout=15)
        await asyncio.sleep(1.0)
        got = [s["body"] for s in b.matching(lambda s: getattr(s, "name", "") == "message" and s["body"].startswith("durable #"))]
        assert len(got) == len(set(got)), f"duplicates after crash: {got}"
        assert got == sorted(got), "messages out of order after crash"
        assert set(acked) <= set(got)
    finally:
        await pool.close_all()
        server_factory.stop(srv)
