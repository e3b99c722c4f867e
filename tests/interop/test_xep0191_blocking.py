"""XEP-0191: Blocking Command."""

from __future__ import annotations

import asyncio

from slixmpp.exceptions import IqError

from kithtest.xmpp import NS_BLOCKING, error_condition, iq_error_condition, make_friends

NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"


def is_block_push(iq, kind: str, jid: str | None = None) -> bool:
    if iq["type"] != "set":
        return False
    el = iq.xml.find(f"{{{NS_BLOCKING}}}{kind}")
    if el is None:
        return False
    if jid is None:
        return True
    return any(it.get("jid") == jid for it in el.findall(f"{{{NS_BLOCKING}}}item"))


def msg_with_body(body):
    return lambda m: m["type"] != "error" and m["body"] == body


async def test_block_list_push_and_unblock(xmpp):
    me, pest = await xmpp.account("blocker"), await xmpp.account("pest")
    phone = await xmpp.connect(me, resource="phone")
    laptop = await xmpp.connect(me, resource="laptop")
    for c in (phone, laptop):
        assert await c.plugin["xep_0191"].get_blocked_jids(timeout=10) == set()

    await phone.plugin["xep_0191"].block(pest.jid, timeout=10)
    for c in (phone, laptop):
        await c.wait_iq(lambda iq: is_block_push(iq, "block", pest.jid), what="block push")
    assert {str(j) for j in await laptop.plugin["xep_0191"].get_blocked_jids(timeout=10)} == {pest.jid}

    await laptop.plugin["xep_0191"].unblock(pest.jid, timeout=10)
    for c in (phone, laptop):
        await c.wait_iq(lambda iq: is_block_push(iq, "unblock", pest.jid), what="unblock push")
    assert await phone.plugin["xep_0191"].get_blocked_jids(timeout=10) == set()


async def test_blocked_contact_cannot_message_and_gets_service_unavailable(xmpp):
    me, pest = await xmpp.account("quiet"), await xmpp.account("spammer")
    a = await xmpp.connect(me)
    p = await xmpp.connect(pest)
    await a.plugin["xep_0191"].get_blocked_jids(timeout=10)
    await a.plugin["xep_0191"].block(pest.jid, timeout=10)

    for target in (me.jid, a.boundjid.full):
        p.send_message(mto=target, mbody=f"buy now {target}", mtype="chat")
        err = await p.wait_message(lambda m: m["type"] == "error", what="error for a blocked message")
        assert error_condition(err) == "service-unavailable", err
    await asyncio.sleep(1.0)
    assert not a.matching(lambda s: s.xml.tag == "{jabber:client}message" and "buy now" in (s["body"] or "")), \
        "blocked contact's message was delivered"

    # IQs from the blocked contact are refused too (MUST return an error)
    try:
        await p.plugin["xep_0199"].ping(jid=a.boundjid.full, timeout=10)
        raise AssertionError("ping from a blocked contact was answered")
    except IqError as e:
        assert iq_error_condition(e) == "service-unavailable", e


async def test_blocker_cannot_message_blocked_contact(xmpp):
    me, pest = await xmpp.account("blk"), await xmpp.account("blkd")
    a = await xmpp.connect(me)
    p = await xmpp.connect(pest)
    await a.plugin["xep_0191"].block(pest.jid, timeout=10)
    a.send_message(mto=p.boundjid.full, mbody="you shouldn't get this", mtype="chat")
    err = await a.wait_message(lambda m: m["type"] == "error", what="error for messaging a blocked JID")
    assert error_condition(err) == "not-acceptable", err
    assert err.xml.find(f"{{jabber:client}}error/{{{NS_BLOCKING_ERRORS}}}blocked") is not None, \
        "missing <blocked xmlns='urn:xmpp:blocking:errors'/>"
    await asyncio.sleep(0.5)
    assert not p.matching(lambda s: s.xml.tag == "{jabber:client}message" and s["body"] == "you shouldn't get this")


async def test_a_blocked_full_jid_stops_messages_to_that_resource_only(xmpp):
    # XEP-0191 §3.4 with the matching rules of XEP-0016 §2.1: a blocked
    # user@domain/resource is that one resource, not the whole account.
    me, other = await xmpp.account("blkres"), await xmpp.account("blkres2")
    a = await xmpp.connect(me)
    phone = await xmpp.connect(other, resource="phone")
    laptop = await xmpp.connect(other, resource="laptop")
    blocked = f"{other.jid}/phone"
    await a.plugin["xep_0191"].block(blocked, timeout=10)

    a.send_message(mto=blocked, mbody="not to the phone", mtype="chat")
    err = await a.wait_message(lambda m: m["type"] == "error", what="error for messaging a blocked resource")
    assert error_condition(err) == "not-acceptable", err

    a.send_message(mto=f"{other.jid}/laptop", mbody="to the laptop", mtype="chat")
    await laptop.wait_message(msg_with_body("to the laptop"), what="message to the resource not blocked")
    await asyncio.sleep(0.5)
    assert not phone.matching(lambda s: s.xml.tag == "{jabber:client}message" and s["body"] == "not to the phone")


async def test_block_hides_presence_and_unblock_restores_it(xmpp):
    me, friend = await xmpp.account("hider"), await xmpp.account("friend")
    a = await xmpp.connect(me, resource="a")
    b = await xmpp.connect(friend, resource="b")
    await make_friends(a, b)
    await a.plugin["xep_0191"].block(friend.jid, timeout=10)
    # the blocked contact sees the blocker go offline ...
    await b.wait_presence(lambda p: p["from"].full == f"{me.jid}/a" and p["type"] == "unavailable",
                          what="unavailable presence from the blocker")
    # ... and no longer sees presence changes
    n_before = len(b.matching(lambda s: s.xml.tag == "{jabber:client}presence"))
    a.send_presence(pstatus="hidden from b")
    # and the blocker no longer gets the contact's presence
    b.send_presence(pstatus="b is here")
    await asyncio.sleep(1.5)
    assert not b.matching(lambda s: s.xml.tag == "{jabber:client}presence" and s["status"] == "hidden from b")
    assert not a.matching(lambda s: s.xml.tag == "{jabber:client}presence" and s["status"] == "b is here")
    assert n_before >= 1

    await a.plugin["xep_0191"].unblock(friend.jid, timeout=10)
    await b.wait_presence(lambda p: p["from"].full == f"{me.jid}/a" and p["type"] != "unavailable",
                          what="current presence after unblock")
    a.send_message(mto=b.boundjid.full, mbody="friends again", mtype="chat")
    await b.wait_message(msg_with_body("friends again"))
    b.send_message(mto=a.boundjid.full, mbody="yay", mtype="chat")
    await a.wait_message(msg_with_body("yay"))


async def test_block_persists_and_blocks_offline_storage(xmpp):
    me, pest = await xmpp.account("persistb"), await xmpp.account("persistp")
    a = await xmpp.connect(me)
    await a.plugin["xep_0191"].block(pest.jid, timeout=10)
    await a.close()
    p = await xmpp.connect(pest)
    p.send_message(mto=me.jid, mbody="while you were away", mtype="chat")
    await p.wait_message(lambda m: m["type"] == "error", what="error for a blocked offline message")
    a2 = await xmpp.connect(me)
    assert {str(j) for j in await a2.plugin["xep_0191"].get_blocked_jids(timeout=10)} == {pest.jid}
    await asyncio.sleep(1.5)
    assert not a2.matching(lambda s: s.xml.tag == "{jabber:client}message" and s["body"] == "while you were away"), \
        "message from a blocked contact was stored and delivered later"


async def test_unblock_all(xmpp):
    me = await xmpp.account("unall")
    others = [await xmpp.account("o") for _ in range(3)]
    a = await xmpp.connect(me)
    await a.plugin["xep_0191"].block([o.jid for o in others], timeout=10)
    assert {str(j) for j in await a.plugin["xep_0191"].get_blocked_jids(timeout=10)} == {o.jid for o in others}
    # slixmpp's unblock() refuses None, so send the empty <unblock/> ourselves
    iq = a.make_iq_set()
    iq.enable("unblock")
    await iq.send(timeout=10)
    await a.wait_iq(lambda iq: is_block_push(iq, "unblock")
                    and not iq.xml.find(f"{{{NS_BLOCKING}}}unblock").findall(f"{{{NS_BLOCKING}}}item"),
                    what="unblock-all push")
    assert await a.plugin["xep_0191"].get_blocked_jids(timeout=10) == set()
    o = await xmpp.connect(others[0])
    o.send_message(mto=a.boundjid.full, mbody="hello again", mtype="chat")
    await a.wait_message(msg_with_body("hello again"))


async def test_empty_block_is_bad_request(xmpp):
    me = await xmpp.account("emptyblk")
    a = await xmpp.connect(me)
    iq = a.make_iq_set()
    iq.enable("block")
    try:
        await iq.send(timeout=10)
        raise AssertionError("empty <block/> accepted")
    except IqError as e:
        assert iq_error_condition(e) == "bad-request", e
