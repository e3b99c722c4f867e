"""RFC 6121 (XMPP IM): roster, subscriptions, presence, messages, priorities,
offline storage (XEP-0160) with XEP-0203 delay stamps, XEP-0359 stanza ids."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
import xml.etree.ElementTree as ET

from kithtest.xmpp import NS_DELAY, NS_ROSTER, NS_SID, ClientPool, body_of, make_friends, server_roster


async def roster_items(c) -> dict[str, dict]:
    return await server_roster(c)


def is_roster_push(iq, own_bare: str) -> bool:
    return (
        iq["type"] == "set"
        and iq.xml.find(f"{{{NS_ROSTER}}}query") is not None
        and (not iq["from"] or iq["from"].full == own_bare)
    )


def push_items(iq) -> dict[str, dict]:
    q = iq.xml.find(f"{{{NS_ROSTER}}}query")
    return {it.get("jid"): dict(it.attrib) for it in q.findall(f"{{{NS_ROSTER}}}item")}


def stanza_ids(msg, by: str) -> list[str]:
    return [el.get("id") for el in msg.xml.findall(f"{{{NS_SID}}}stanza-id") if el.get("by") == by]


def parse_stamp(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# ---- roster -----------------------------------------------------------------------

async def test_fresh_roster_is_empty(xmpp):
    acct = await xmpp.account("empty")
    c = await xmpp.connect(acct, roster=False)
    assert await roster_items(c) == {}


async def test_roster_set_push_get_update_remove(xmpp):
    acct = await xmpp.account("roster")
    contact = await xmpp.account("contact")
    phone = await xmpp.connect(acct, resource="phone")
    laptop = await xmpp.connect(acct, resource="laptop")

    await phone.update_roster(contact.jid, name="Jürgen 🎸", groups=["Friends", "Band"], timeout=10)
    for c in (phone, laptop):
        push = await c.wait_iq(lambda iq: is_roster_push(iq, acct.jid) and contact.jid in push_items(iq),
                               what="roster push after add")
        item = push_items(push)[contact.jid]
        assert item.get("name") == "Jürgen 🎸"
        assert item.get("subscription", "none") == "none"
    got = (await roster_items(laptop))
    assert got[contact.jid]["name"] == "Jürgen 🎸"
    assert set(got[contact.jid]["groups"]) == {"Friends", "Band"}
    assert got[contact.jid]["subscription"] == "none"

    await laptop.update_roster(contact.jid, name="J", groups=["Band"], timeout=10)
    push = await phone.wait_iq(
        lambda iq: is_roster_push(iq, acct.jid) and push_items(iq).get(contact.jid, {}).get("name") == "J",
        what="roster push after update")
    assert push
    got = (await roster_items(phone))
    assert got[contact.jid]["name"] == "J" and got[contact.jid]["groups"] == ["Band"]

    await phone.del_roster_item(contact.jid)
    for c in (phone, laptop):
        await c.wait_iq(
            lambda iq: is_roster_push(iq, acct.jid)
            and push_items(iq).get(contact.jid, {}).get("subscription") == "remove",
            what="roster push after remove")
    assert contact.jid not in (await roster_items(laptop))


async def test_roster_survives_reconnect(xmpp):
    acct = await xmpp.account("persist")
    contact = await xmpp.account("pc")
    c = await xmpp.connect(acct)
    await c.update_roster(contact.jid, name="Persisted", timeout=10)
    await c.close()
    c2 = await xmpp.connect(acct)
    assert (await roster_items(c2))[contact.jid]["name"] == "Persisted"


# ---- subscriptions and presence ---------------------------------------------------------

async def test_subscription_handshake_and_presence(xmpp):
    a_acct, b_acct = await xmpp.account("alice"), await xmpp.account("bob")
    a = await xmpp.connect(a_acct, resource="a1")
    b = await xmpp.connect(b_acct, resource="b1")
    b.send_presence(pstatus="at work", pshow="dnd")

    # A asks to see B's presence
    a.send_presence(pto=b_acct.jid, ptype="subscribe")
    push = await a.wait_iq(lambda iq: is_roster_push(iq, a_acct.jid) and b_acct.jid in push_items(iq),
                           what="roster push for the outgoing subscription")
    item = push_items(push)[b_acct.jid]
    assert item.get("subscription", "none") == "none" and item.get("ask") == "subscribe", item

    req = await b.wait_presence(lambda p: p["type"] == "subscribe", what="subscription request")
    assert req["from"].full == a_acct.jid, "subscription request must come from the bare JID"

    # B approves
    b.send_presence(pto=a_acct.jid, ptype="subscribed")
    ok = await a.wait_presence(lambda p: p["type"] == "subscribed", what="subscription approval")
    assert ok["from"].bare == b_acct.jid
    await a.wait_iq(lambda iq: is_roster_push(iq, a_acct.jid)
                    and push_items(iq).get(b_acct.jid, {}).get("subscription") == "to",
                    what="roster push subscription=to")
    # ... and A immediately gets B's current presence (RFC 6121 §3.1.6)
    pres = await a.wait_presence(lambda p: p["from"].full == f"{b_acct.jid}/b1" and p["type"] in ("dnd", "available"),
                                 what="B's presence after approval")
    assert pres["status"] == "at work" and pres["show"] == "dnd"

    # B subscribes back, A approves -> 'both'
    b.send_presence(pto=a_acct.jid, ptype="subscribe")
    await a.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == b_acct.jid)
    a.send_presence(pto=b_acct.jid, ptype="subscribed")
    await b.wait_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == a_acct.jid)
    await b.wait_presence(lambda p: p["from"].full == f"{a_acct.jid}/a1" and p["type"] == "available",
                          what="A's presence after approval")
    assert (await roster_items(a))[b_acct.jid]["subscription"] == "both"
    assert (await roster_items(b))[a_acct.jid]["subscription"] == "both"

    # presence broadcast: A changes status, B sees it
    a.send_presence(pshow="away", pstatus="lunch 🍜")
    p = await b.wait_presence(lambda p: p["from"].full == f"{a_acct.jid}/a1" and p["show"] == "away")
    assert p["status"] == "lunch 🍜"

    # unavailable on disconnect (no explicit unavailable presence sent)
    await b.close()
    gone = await a.wait_presence(lambda p: p["from"].full == f"{b_acct.jid}/b1" and p["type"] == "unavailable",
                                 what="unavailable after B disconnected")
    assert gone


async def test_unavailable_broadcast_when_connection_drops(xmpp):
    """Even without a clean </stream:stream>, contacts learn the session ended."""
    a_acct, b_acct = await xmpp.account("drop"), await xmpp.account("watch")
    a = await xmpp.connect(a_acct, resource="x")
    b = await xmpp.connect(b_acct)
    await make_friends(a, b)
    a.abort()  # TCP connection dropped abruptly
    await b.wait_presence(lambda p: p["from"].full == f"{a_acct.jid}/x" and p["type"] == "unavailable",
                          timeout=20, what="unavailable after an abrupt disconnect")


async def test_subscription_request_to_offline_user_is_delivered_at_login(xmpp):
    a_acct, b_acct = await xmpp.account("asker"), await xmpp.account("sleeper")
    a = await xmpp.connect(a_acct)
    a.send_presence(pto=b_acct.jid, ptype="subscribe")
    await a.wait_iq(lambda iq: is_roster_push(iq, a_acct.jid) and b_acct.jid in push_items(iq))
    await asyncio.sleep(0.5)
    b = await xmpp.connect(b_acct)
    req = await b.wait_presence(lambda p: p["type"] == "subscribe", timeout=10,
                                what="stored subscription request")
    assert req["from"].bare == a_acct.jid


async def test_presence_is_not_leaked_to_non_subscribers(xmpp):
    a_acct, stranger_acct = await xmpp.account("private"), await xmpp.account("stranger")
    stranger = await xmpp.connect(stranger_acct)
    a = await xmpp.connect(a_acct)
    a.send_presence(pstatus="secret status")
    await asyncio.sleep(1.5)
    assert not stranger.matching(lambda s: s.xml.tag == "{jabber:client}presence" and s["from"].bare == a_acct.jid)


async def test_unsubscribed_revokes_presence(xmpp):
    a_acct, b_acct = await xmpp.account("revoker"), await xmpp.account("revoked")
    a = await xmpp.connect(a_acct, resource="ra")
    b = await xmpp.connect(b_acct)
    await make_friends(a, b)
    # A cancels B's subscription to A's presence
    a.send_presence(pto=b_acct.jid, ptype="unsubscribed")
    await b.wait_presence(lambda p: p["type"] == "unsubscribed" and p["from"].bare == a_acct.jid)
    await b.wait_presence(lambda p: p["type"] == "unavailable" and p["from"].full == f"{a_acct.jid}/ra",
                          what="unavailable from A after revocation (RFC 6121 §3.2.3)")
    items = (await roster_items(b))
    assert items[a_acct.jid]["subscription"] == "from", items
    # A's further presence changes are no longer sent to B
    a.send_presence(pstatus="you can't see this")
    await asyncio.sleep(1.5)
    assert not b.matching(lambda p: p.xml.tag == "{jabber:client}presence" and p["status"] == "you can't see this")


# ---- messages ----------------------------------------------------------------------------

UNICODE_BODIES = [
    "Hello, world",
    "emoji 😀👍🏽👨‍👩‍👧‍👦🇩🇪 and a ZWJ sequence",
    "RTL: مرحبا بالعالم — שלום עולם",
    "mixed bidi: abc אבג 123 مرحبا",
    "CJK 你好世界 こんにちは 안녕하세요",
    "combining: é (e\u0301) Å (A\u030a) Z̤͔ͧ̑̓",
    "xml specials: <b>&amp; \"quotes\" 'apos' </body> ]]> &lt;",
    "multi\nline\n\ttabbed",
]


async def test_message_to_full_jid_roundtrips_text_exactly(xmpp):
    a_acct, b_acct = await xmpp.account("sender"), await xmpp.account("rcpt")
    a = await xmpp.connect(a_acct, resource="a")
    b = await xmpp.connect(b_acct, resource="b")
    problems = []
    for body in UNICODE_BODIES:
        msg_id = "m-" + uuid.uuid4().hex
        m = a.make_message(mto=f"{b_acct.jid}/b", mbody=body, mtype="chat")
        m["id"] = msg_id
        m.send()
        got = await b.wait_message(lambda m: m["id"] == msg_id, what=f"message {body!r}")
        if got["body"] != body:
            problems.append(f"sent {body!r}, received {got['body']!r}")
        assert got["type"] == "chat"
        assert got["from"].full == f"{a_acct.jid}/a", "from must be the sender's full JID"
        assert got["to"].bare == b_acct.jid
    assert not problems, "\n".join(problems)


async def test_10kb_message(xmpp):
    a_acct, b_acct = await xmpp.account("big"), await xmpp.account("bigr")
    a = await xmpp.connect(a_acct)
    b = await xmpp.connect(b_acct)
    unit = "0123456789abcdef ünïcödé ✓ "
    body = (unit * (10240 // len(unit) + 1))[:10240]
    a.send_message(mto=b.boundjid.full, mbody=body, mtype="chat")
    got = await b.wait_message(lambda m: m["body"].startswith("0123"))
    assert got["body"] == body
    assert len(got["body"]) == 10240


async def test_routed_message_carries_stanza_id_by_recipient(xmpp):
    a_acct, b_acct = await xmpp.account("sid"), await xmpp.account("sidr")
    a = await xmpp.connect(a_acct)
    b = await xmpp.connect(b_acct)
    for i in range(2):
        a.send_message(mto=b.boundjid.full, mbody=f"sid {i}", mtype="chat")
    m0 = await b.wait_message(lambda m: m["body"] == "sid 0")
    m1 = await b.wait_message(lambda m: m["body"] == "sid 1")
    ids0, ids1 = stanza_ids(m0, b_acct.jid), stanza_ids(m1, b_acct.jid)
    assert len(ids0) == 1 and ids0[0], f"no <stanza-id by='{b_acct.jid}'/>: {m0}"
    assert len(ids1) == 1 and ids1[0]
    assert ids0 != ids1, "stanza ids must be unique"


async def test_client_supplied_stanza_id_is_not_trusted(xmpp):
    """XEP-0359 business rules 3-4: a stanza-id claiming to be by the recipient
    must be overridden, leaving exactly one; the sender's origin-id is preserved."""
    a_acct, b_acct = await xmpp.account("forger"), await xmpp.account("fvictim")
    a = await xmpp.connect(a_acct)
    b = await xmpp.connect(b_acct)
    m = a.make_message(mto=b.boundjid.full, mbody="forged sid", mtype="chat")
    m.xml.append(ET.Element(f"{{{NS_SID}}}stanza-id", {"by": b_acct.jid, "id": "forged-id-123"}))
    m.xml.append(ET.Element(f"{{{NS_SID}}}origin-id", {"id": "origin-abc-789"}))
    m.send()
    got = await b.wait_message(lambda m: m["body"] == "forged sid")
    ids = stanza_ids(got, b_acct.jid)
    assert "forged-id-123" not in ids, "the sender's forged stanza-id reached the recipient"
    assert len(ids) == 1, ids
    origin = got.xml.find(f"{{{NS_SID}}}origin-id")
    assert origin is not None and origin.get("id") == "origin-abc-789", "origin-id not preserved"


async def test_message_to_bare_jid_goes_to_highest_priority_resource(xmpp):
    a_acct, b_acct = await xmpp.account("prio"), await xmpp.account("prior")
    a = await xmpp.connect(a_acct)
    low = await xmpp.connect(b_acct, resource="low", priority=1)
    high = await xmpp.connect(b_acct, resource="high", priority=5)
    neg = await xmpp.connect(b_acct, resource="neg", priority=-1)
    await asyncio.sleep(0.5)
    a.send_message(mto=b_acct.jid, mbody="to the best one", mtype="chat")
    got = await high.wait_message(lambda m: m["body"] == "to the best one")
    assert got["from"].full == a.boundjid.full
    await asyncio.sleep(1.0)
    assert not neg.matching(lambda m: m.xml.tag == "{jabber:client}message" and m["body"] == "to the best one"), \
        "a resource with negative priority got a message sent to the bare JID (RFC 6121 §8.5.2.1.1)"

    # raise 'low' above 'high': the next message goes there
    low.send_presence(ppriority=10)
    await asyncio.sleep(0.5)
    a.send_message(mto=b_acct.jid, mbody="now to low", mtype="chat")
    await low.wait_message(lambda m: m["body"] == "now to low")


async def test_message_to_bare_jid_with_only_negative_priority_is_stored_offline(xmpp):
    a_acct, b_acct = await xmpp.account("negs"), await xmpp.account("negr")
    a = await xmpp.connect(a_acct)
    neg = await xmpp.connect(b_acct, resource="neg", priority=-5)
    await asyncio.sleep(0.3)
    a.send_message(mto=b_acct.jid, mbody="for later", mtype="chat")
    await asyncio.sleep(1.0)
    assert not neg.matching(lambda m: m.xml.tag == "{jabber:client}message" and m["body"] == "for later")
    await neg.close()
    b = await xmpp.connect(b_acct, resource="pos", priority=0)
    got = await b.wait_message(lambda m: m["body"] == "for later")
    assert got.xml.find(f"{{{NS_DELAY}}}delay") is not None


async def test_a_typing_notification_to_an_offline_user_is_dropped_but_to_no_one_bounces(xmpp):
    """RFC 6121 §8.5.2.2: a message worth nothing offline (a chat state alone) to an
    account with no available resource is dropped silently; to an account that does
    not exist it comes back as <service-unavailable/> (§8.5.2.2.1 / §8.1)."""
    a_acct, b_acct = await xmpp.account("tyo"), await xmpp.account("tyr")
    a = await xmpp.connect(a_acct)
    for to, tag in [(b_acct.jid, "offline"), (f"nobody-{uuid.uuid4().hex[:8]}@localhost", "missing")]:
        msg = a.make_message(mto=to, mtype="chat")
        msg["id"] = f"typing-{tag}"
        msg.xml.append(ET.Element("{http://jabber.org/protocol/chatstates}composing"))
        msg.send()
    await a.wait_message(lambda m: m["id"] == "typing-missing" and m["type"] == "error", what="the bounce")
    await asyncio.sleep(0.5)
    assert not a.matching(lambda m: m["id"] == "typing-offline"), "an existing account's chat state was bounced"
    # Nothing was stored for later either.
    b = await xmpp.connect(b_acct)
    await asyncio.sleep(1.0)
    assert not b.matching(lambda m: m["id"] == "typing-offline")


async def test_offline_messages_delivered_in_order_with_delay(xmpp):
    a_acct, b_acct = await xmpp.account("offs"), await xmpp.account("offr")
    a = await xmpp.connect(a_acct, resource="desk")
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    bodies = [f"offline #{i} 📬" for i in range(5)]
    for body in bodies:
        a.send_message(mto=b_acct.jid, mbody=body, mtype="chat")
    # make sure they were processed before the recipient logs in
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    await asyncio.sleep(0.5)
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)

    b = await xmpp.connect(b_acct)
    got = []
    for body in bodies:
        got.append(await b.wait_message(lambda m, body=body: m["body"] == body, timeout=10))
    order = [next(i for i, s in enumerate(b.received) if s is m) for m in got]
    assert order == sorted(order), "offline messages arrived out of order"
    for m in got:
        assert m["from"].full == f"{a_acct.jid}/desk"
        delay = m.xml.find(f"{{{NS_DELAY}}}delay")
        assert delay is not None, f"offline message without <delay xmlns='urn:xmpp:delay'>: {m}"
        stamp = parse_stamp(delay.get("stamp"))
        assert stamp.tzinfo is not None, "delay stamp must be UTC (XEP-0082)"
        assert before <= stamp <= after, f"delay stamp {stamp} not within [{before}, {after}]"
        ids = stanza_ids(m, b_acct.jid)
        assert len(ids) == 1 and ids[0], "stored message lacks <stanza-id by=recipient>"
    # delivered once: a new session does not get them again
    await b.close()
    b2 = await xmpp.connect(b_acct)
    await asyncio.sleep(1.5)
    assert not b2.matching(lambda m: m.xml.tag == "{jabber:client}message" and m["body"] in bodies), \
        "offline messages were delivered twice"


async def test_offline_message_survives_server_restart(server_factory, backend):
    srv = server_factory.start("restart", backend)
    pool = ClientPool(srv)
    try:
        a_acct, b_acct = await pool.account("rsa"), await pool.account("rsb")
        a = await pool.connect(a_acct)
        a.send_message(mto=b_acct.jid, mbody="kept across restart", mtype="chat")
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        await pool.close_all()
        await asyncio.to_thread(srv.restart)
        b = await pool.connect(b_acct)
        got = await b.wait_message(lambda m: m["body"] == "kept across restart", timeout=10)
        assert got.xml.find(f"{{{NS_DELAY}}}delay") is not None
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_message_to_unknown_resource_of_online_user_goes_to_bare(xmpp):
    """RFC 6121 §8.5.3.2.1: a chat message to an unavailable full JID is handled as if sent to the bare JID."""
    a_acct, b_acct = await xmpp.account("fb"), await xmpp.account("fbr")
    a = await xmpp.connect(a_acct)
    b = await xmpp.connect(b_acct, resource="online")
    a.send_message(mto=f"{b_acct.jid}/gone", mbody="fallback", mtype="chat")
    got = await b.wait_message(lambda m: m["body"] == "fallback")
    assert got["from"].full == a.boundjid.full


async def test_many_messages_arrive_complete_and_in_order(xmpp):
    a_acct, b_acct = await xmpp.account("burst"), await xmpp.account("burstr")
    a = await xmpp.connect(a_acct)
    b = await xmpp.connect(b_acct)
    n = 200
    t0 = time.monotonic()
    for i in range(n):
        a.send_message(mto=b.boundjid.full, mbody=f"burst {i}", mtype="chat")
    last = await b.wait_message(lambda m: m["body"] == f"burst {n - 1}", timeout=30)
    assert last
    bodies = [body_of(m) for m in b.received if m.xml.tag == "{jabber:client}message"]
    bodies = [x for x in bodies if x and x.startswith("burst ")]
    assert bodies == [f"burst {i}" for i in range(n)], "messages lost, duplicated or reordered"
    assert time.monotonic() - t0 < 30
