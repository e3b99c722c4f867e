"""XEP-0352 Client State Indication: an inactive client is spared presence floods
and typing notifications but gets messages at once."""

from __future__ import annotations

import asyncio

from kithtest.xmpp import make_friends


async def test_inactive_client_gets_messages_at_once_and_presence_later(xmpp):
    alice, bob = await xmpp.account("csa"), await xmpp.account("csb")
    a = await xmpp.connect(alice, resource="a")
    b = await xmpp.connect(bob, resource="phone")
    await make_friends(a, b)
    await asyncio.sleep(0.5)
    b.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
    await b.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    mark = len(b.received)
    for show in ("away", "xa", "dnd", "chat", "away"):
        a.send_presence(pshow=show)
    a.send_raw(f"<message to='{b.boundjid.full}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await asyncio.sleep(1.0)
    flood = [s for s in b.received[mark:] if getattr(s, "name", "") in ("presence", "message")]
    assert not flood, f"an inactive client got {len(flood)} unimportant stanzas"

    a.send_message(mto=b.boundjid.full, mbody="wake up", mtype="chat")
    msg = await b.wait_message(lambda m: m["body"] == "wake up", timeout=5)
    later = b.received[mark:]
    presences = [s for s in later if getattr(s, "name", "") == "presence" and s["from"].bare == alice.jid]
    # Held presence comes first (only the latest), then the message.
    assert len(presences) == 1, f"expected only the latest presence, got {len(presences)}"
    assert presences[0]["show"] == "away"
    assert later.index(presences[0]) < later.index(msg)

    # Going active flushes what is held.
    a.send_presence(pshow="dnd")
    await asyncio.sleep(0.5)
    assert not [s for s in b.received if getattr(s, "name", "") == "presence" and s["show"] == "dnd"
                and b.received.index(s) > later.index(msg) + mark]
    b.send_raw("<active xmlns='urn:xmpp:csi:0'/>")
    await b.wait_presence(lambda p: p["from"].bare == alice.jid and p["show"] == "dnd", timeout=5)
