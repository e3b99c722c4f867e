"""XEP-0424 message retraction ("delete for everyone"): the retraction reaches the
other side, also when it was offline, and both archives keep only a tombstone."""

from __future__ import annotations

import asyncio

from test_xep0313_mam import PLUGINS, mam_query

NS_RETRACT = "urn:xmpp:message-retract:1"


async def test_retraction_reaches_an_offline_peer_and_leaves_tombstones(xmpp):
    alice, bob = await xmpp.account("rta"), await xmpp.account("rtb")
    a = await xmpp.connect(alice, resource="phone", plugins=PLUGINS)
    b = await xmpp.connect(bob, resource="phone", plugins=PLUGINS)
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='m1'><body>sent to the wrong chat</body>"
               "<origin-id xmlns='urn:xmpp:sid:0' id='origin-1'/></message>")
    await b.wait_message(lambda m: m["body"] == "sent to the wrong chat")
    await b.close()
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='m2'><retract xmlns='{NS_RETRACT}' id='origin-1'/>"
               f"<fallback xmlns='urn:xmpp:fallback:0' for='{NS_RETRACT}'/>"
               "<body>This message was deleted.</body><store xmlns='urn:xmpp:hints'/></message>")
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)

    b2 = await xmpp.connect(bob, resource="phone", plugins=PLUGINS)
    retraction = await b2.wait_for(lambda s: s.xml.find(f"{{{NS_RETRACT}}}retract") is not None, what="retraction")
    assert retraction.xml.find(f"{{{NS_RETRACT}}}retract").get("id") == "origin-1"
    await asyncio.sleep(0.3)
    for client in (a, b2):
        page = await mam_query(client, {"with": alice.jid if client is b2 else bob.jid})
        assert "sent to the wrong chat" not in page.bodies, f"{client.boundjid}: the archive still has the text"
        assert len(page.items) == 2, page.items
        assert page.items[0].body is None, "the tombstone keeps no body"
        # The text is gone from full-text search too.
        found = await mam_query(client, {"{urn:xmpp:fulltext:0}fulltext": "wrong chat"})
        assert found.items == [], found.items


async def test_only_the_sender_can_retract(xmpp):
    alice, bob = await xmpp.account("rsa"), await xmpp.account("rsb")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='k1'><body>keep me</body>"
               "<origin-id xmlns='urn:xmpp:sid:0' id='keep-1'/></message>")
    await b.wait_message(lambda m: m["body"] == "keep me")
    # Bob tries to delete Alice's message from both archives.
    b.send_raw(f"<message to='{alice.jid}' type='chat'><retract xmlns='{NS_RETRACT}' id='keep-1'/></message>")
    await b.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    await asyncio.sleep(0.3)
    for client, peer in ((a, bob.jid), (b, alice.jid)):
        page = await mam_query(client, {"with": peer})
        assert "keep me" in page.bodies, f"{client.boundjid}: someone else's retraction removed a message"
