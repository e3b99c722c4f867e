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


async def test_a_device_catching_up_gets_what_came_between_its_users_own_messages(xmpp):
    """Bob's laptop is offline while his phone chats: his log holds what Alice
    sent, then his own sent copies (for his archive), interleaved. The laptop's
    catch-up skips his own copies, and must not skip what came before them."""
    alice, bob = await xmpp.account("ica"), await xmpp.account("icb")
    laptop = await xmpp.connect(bob, resource="laptop")
    await laptop.close()
    a = await xmpp.connect(alice, resource="desk")
    phone = await xmpp.connect(bob, resource="phone")
    for n in range(3):
        a.send_message(mto=bob.jid, mbody=f"question {n}", mtype="chat")
        await phone.wait_message(lambda m, n=n: m["body"] == f"question {n}", what=f"question {n}")
        phone.send_message(mto=alice.jid, mbody=f"answer {n}", mtype="chat")
        await a.wait_message(lambda m, n=n: m["body"] == f"answer {n}", what=f"answer {n}")
    laptop = await xmpp.connect(bob, resource="laptop")
    for n in range(3):
        await laptop.wait_message(lambda m, n=n: m["body"] == f"question {n}", what=f"question {n} at catch-up")


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
    # XEP-0313 §3.5: the copy carries the sender's archive id, to match MAM results.
    sid = sent.xml.find("{urn:xmpp:carbons:2}sent/{urn:xmpp:forward:0}forwarded/{jabber:client}message/{urn:xmpp:sid:0}stanza-id")
    assert sid is not None and sid.get("by") == alice.jid and sid.get("id"), "sent carbon without the sender's stanza-id"
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


async def _drop_and_reconnect(pool: ClientPool, c) -> asyncio.Future:
    """Cut the TCP connection without a closing handshake, then reconnect; the
    returned future completes on `session_resumed` (or `session_start`)."""
    loop = asyncio.get_running_loop()
    resumed, started = loop.create_future(), loop.create_future()
    c.add_event_handler("session_resumed", lambda _e: resumed.done() or resumed.set_result(True))
    c.add_event_handler("session_start", lambda _e: started.done() or started.set_result(True))
    c.transport.abort()
    await asyncio.sleep(0.5)
    pool.start(c)
    return resumed, started


async def test_tcp_drop_then_resume_loses_nothing(xmpp):
    alice, bob = await xmpp.account("rsa"), await xmpp.account("rsb")
    b = await xmpp.connect(bob, resource="phone", plugins=SM_PLUGINS)
    a = await xmpp.connect(alice)
    await asyncio.sleep(0.5)
    assert b.plugin["xep_0198"].sm_id, "server did not offer resumption"
    a.send_message(mto=bob.jid, mbody="before the drop", mtype="chat")
    await b.wait_message(lambda m: m["body"] == "before the drop")
    resumed, started = await _drop_and_reconnect(xmpp, b)
    for i in range(3):
        a.send_message(mto=bob.jid, mbody=f"during the drop {i}", mtype="chat")
    await asyncio.wait_for(resumed, 15)
    assert not started.done(), "a new session was started instead of resuming"
    for i in range(3):
        await b.wait_message(lambda m, i=i: m["body"] == f"during the drop {i}")
    await asyncio.sleep(1.0)
    bodies = [s["body"] for s in b.matching(lambda s: getattr(s, "name", "") == "message" and s["body"])]
    assert len(bodies) == len(set(bodies)), f"duplicates after resumption: {bodies}"


async def test_resume_after_the_window_delivers_at_next_login(server_factory, backend):
    srv = server_factory.start("window", backend, {"limits": {"resume_timeout_secs": 1}})
    pool = ClientPool(srv)
    try:
        alice, bob = await pool.account("wna"), await pool.account("wnb")
        b = await pool.connect(bob, resource="phone", plugins=SM_PLUGINS)
        a = await pool.connect(alice)
        await asyncio.sleep(0.3)
        b.transport.abort()
        a.send_message(mto=bob.jid, mbody="sent into the void", mtype="chat")
        await asyncio.sleep(2.5)
        # The window is over: resuming fails, and a fresh login gets the message.
        b2 = await pool.connect(bob, resource="phone", plugins=SM_PLUGINS)
        got = await b2.wait_message(lambda m: m["body"] == "sent into the void", timeout=10)
        assert got.xml.find("{urn:xmpp:delay}delay") is not None
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_resume_with_an_unknown_id_fails_cleanly(xmpp):
    bob = await xmpp.account("rub")
    b = xmpp.make(bob, plugins=SM_PLUGINS)
    sm = b.plugin["xep_0198"]
    sm.sm_id = "no-such-stream"
    failed = asyncio.get_running_loop().create_future()
    b.add_event_handler("session_start", lambda _e: failed.done() or failed.set_result("bound"))
    xmpp.start(b)
    # After <failed/>, the client binds a new session on the same stream.
    assert await asyncio.wait_for(failed, 15) == "bound"


async def test_resume_claiming_more_than_was_sent_fails_and_the_session_still_resumes(xmpp):
    """A `<resume/>` (XEP-0198 §5) whose h acknowledges stanzas the server never
    sent is refused, with `<failed><unexpected-request/></failed>` (kith's
    answer: the XEP names none for an impossible h at resumption); the session
    keeps waiting, and a resumption with the right h then loses nothing."""
    alice, bob = await xmpp.account("rbh"), await xmpp.account("rbi")
    b = await xmpp.connect(bob, resource="phone", plugins=SM_PLUGINS)
    a = await xmpp.connect(alice)
    await asyncio.sleep(0.5)
    sm = b.plugin["xep_0198"]
    assert sm.sm_id, "server did not offer resumption"
    a.send_message(mto=bob.jid, mbody="before the drop", mtype="chat")
    await b.wait_message(lambda m: m["body"] == "before the drop")
    loop = asyncio.get_running_loop()
    resumed = loop.create_future()
    b.add_event_handler("session_resumed", lambda _e: resumed.done() or resumed.set_result(True))
    b.transport.abort()
    await asyncio.sleep(0.5)
    a.send_message(mto=bob.jid, mbody="during the drop", mtype="chat")

    # Another connection of the same device claims 1,000 stanzas more than it got.
    liar = xmpp.make(bob, resource="phone", plugins=SM_PLUGINS)
    liar_sm = liar.plugin["xep_0198"]
    liar_sm.sm_id, liar_sm.handled = sm.sm_id, sm.handled + 1000
    failed = loop.create_future()
    liar.add_event_handler("sm_failed", lambda st: failed.done() or failed.set_result(st))
    xmpp.start(liar)
    refusal = await asyncio.wait_for(failed, 15)
    conditions = [child.tag for child in refusal.xml]
    assert conditions == ["{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request"], conditions
    assert await liar.wait_closed(timeout=10), "the server kept the refused link open"

    # The session was not taken over: the device resumes it and gets what it missed.
    xmpp.start(b)
    await asyncio.wait_for(resumed, 15)
    await b.wait_message(lambda m: m["body"] == "during the drop")
    await asyncio.sleep(0.5)
    bodies = [s["body"] for s in b.matching(lambda s: getattr(s, "name", "") == "message" and s["body"])]
    assert sorted(bodies) == ["before the drop", "during the drop"], bodies


async def test_ack_for_more_than_was_sent_closes_the_stream(xmpp):
    bob = await xmpp.account("hch")
    b = await xmpp.connect(bob, plugins=SM_PLUGINS)
    await asyncio.sleep(0.5)
    assert b.plugin["xep_0198"].enabled_out
    b.send_raw("<a xmlns='urn:xmpp:sm:3' h='4000000'/>")
    assert await b.wait_closed(timeout=10), "the server kept a stream with an impossible ack"
    assert [e["condition"] for e in b.stream_errors] == ["undefined-condition"]


async def test_receipts_and_read_markers_reach_a_sender_who_went_offline(xmpp):
    alice, bob = await xmpp.account("tka"), await xmpp.account("tkb")
    a = await xmpp.connect(alice, resource="phone")
    a.send_raw(f"<message to='{bob.jid}' id='m1' type='chat'><body>did you get this?</body>"
               "<request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>")
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    await a.close()

    b = await xmpp.connect(bob, resource="laptop")
    got = await b.wait_message(lambda m: m["body"] == "did you get this?")
    b.send_raw(f"<message to='{got['from'].full}' type='chat' id='r1'><received xmlns='urn:xmpp:receipts' id='m1'/></message>")
    b.send_raw(f"<message to='{got['from'].full}' type='chat' id='r2'><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/></message>")
    await b.plugin["xep_0199"].ping(jid="localhost", timeout=10)

    a2 = await xmpp.connect(alice, resource="phone")
    tick = await a2.wait_for(lambda s: s.xml.find("{urn:xmpp:receipts}received") is not None, what="✓✓ receipt")
    read = await a2.wait_for(lambda s: s.xml.find("{urn:xmpp:chat-markers:0}displayed") is not None, what="read marker")
    assert tick.xml.find("{urn:xmpp:receipts}received").get("id") == "m1"
    assert read.xml.find("{urn:xmpp:chat-markers:0}displayed").get("id") == "m1"
    # Chat states are never stored: a typing notification to an offline user is gone.
    await a2.close()
    b.send_raw(f"<message to='{alice.jid}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await b.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    a3 = await xmpp.connect(alice, resource="phone")
    await asyncio.sleep(1.0)
    assert not a3.matching(lambda s: s.xml.find("{http://jabber.org/protocol/chatstates}composing") is not None)


def _with_origin_id(client, to, body, origin):
    from xml.etree import ElementTree as ET

    msg = client.make_message(mto=to, mbody=body, mtype="chat")
    msg.append(ET.fromstring(f"<origin-id xmlns='urn:xmpp:sid:0' id='{origin}'/>"))
    return msg


async def test_a_resent_message_with_the_same_origin_id_is_stored_once(xmpp):
    """XEP-0359 §4 origin-id: a client that resends (e.g. after a reconnect it
    wasn't sure about) must not make the recipient see the message twice."""
    alice, bob = await xmpp.account("dua"), await xmpp.account("dub")
    b = await xmpp.connect(bob, resource="phone")
    a = await xmpp.connect(alice, resource="desk")
    for _ in range(3):
        _with_origin_id(a, bob.jid, "only once please", "dup-1").send()
    _with_origin_id(a, bob.jid, "a different message", "dup-2").send()
    await b.wait_message(lambda m: m["body"] == "a different message")
    await asyncio.sleep(0.5)
    once = b.matching(lambda s: getattr(s, "name", "") == "message" and s["body"] == "only once please")
    assert len(once) == 1, f"the resent message arrived {len(once)} times"
    # The recipient's device that was offline gets it once too, and the archive has one.
    await b.close()
    b2 = await xmpp.connect(bob, resource="phone", plugins=DEFAULT_PLUGINS + ("xep_0313",))
    await asyncio.sleep(0.5)
    assert not b2.matching(lambda s: getattr(s, "name", "") == "message" and s["body"] == "only once please")
    iq = await b2.plugin["xep_0313"].retrieve(with_jid=alice.jid, timeout=10)
    bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in iq["mam"]["results"]]
    assert bodies.count("only once please") == 1, bodies


async def test_a_burst_of_messages_is_acked_only_once_durable_and_arrives_in_order(xmpp):
    """Messages are pipelined into the group commit, but `<a h/>` still counts only
    what is stored, in order, and every message arrives once, in order."""
    alice, bob = await xmpp.account("pba"), await xmpp.account("pbb")
    b = await xmpp.connect(bob, resource="phone")
    a = await xmpp.connect(alice, resource="desk", plugins=SM_PLUGINS)
    sm = a.plugin["xep_0198"]
    await asyncio.sleep(0.5)
    assert sm.enabled_out
    bodies = [f"burst #{i:03d}" for i in range(300)]
    for body in bodies:
        a.send_message(mto=bob.jid, mbody=body, mtype="chat")
    # An IQ after the burst is answered after the messages are stored.
    sm.request_ack()
    await b.wait_message(lambda m: m["body"] == bodies[-1], timeout=20)
    for _ in range(100):
        if not [st for _seq, st in list(sm.unacked_queue) if st.name == "message"]:
            break
        sm.request_ack()
        await asyncio.sleep(0.1)
    assert not [st for _seq, st in list(sm.unacked_queue) if st.name == "message"], "not everything was acked"
    await asyncio.sleep(0.3)
    got = [s["body"] for s in b.matching(lambda s: getattr(s, "name", "") == "message" and s["body"].startswith("burst #"))]
    assert got == bodies
