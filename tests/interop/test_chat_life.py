"""Chat life on top of the inbox log: corrections (XEP-0308), reactions (XEP-0444)
and replies (XEP-0461) travel like messages, reach a recipient who was offline,
and are kept in the archive; hints (XEP-0334) are honoured."""

from __future__ import annotations

import asyncio

from test_xep0313_mam import PLUGINS, mam_query


async def test_corrections_reactions_and_replies_reach_an_offline_peer(xmpp):
    alice, bob = await xmpp.account("cla"), await xmpp.account("clb")
    b = await xmpp.connect(bob, resource="phone", plugins=PLUGINS)
    await b.close()
    a = await xmpp.connect(alice, resource="phone", plugins=PLUGINS)
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='c1'><body>see you at 8</body>"
               "<origin-id xmlns='urn:xmpp:sid:0' id='c1'/></message>")
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='c2'><body>see you at 9</body>"
               "<replace xmlns='urn:xmpp:message-correct:0' id='c1'/></message>")
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='c3'>"
               "<reactions xmlns='urn:xmpp:reactions:0' id='c1'><reaction>👍</reaction></reactions>"
               "<store xmlns='urn:xmpp:hints'/></message>")
    a.send_raw(f"<message to='{bob.jid}' type='chat' id='c4'><body>bring snacks</body>"
               f"<reply xmlns='urn:xmpp:reply:0' to='{alice.jid}/phone' id='c1'/></message>")
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)

    b2 = await xmpp.connect(bob, resource="phone", plugins=PLUGINS)
    fix = await b2.wait_for(lambda s: s.xml.find("{urn:xmpp:message-correct:0}replace") is not None, what="correction")
    assert fix.xml.find("{urn:xmpp:message-correct:0}replace").get("id") == "c1"
    assert fix["body"] == "see you at 9"
    react = await b2.wait_for(lambda s: s.xml.find("{urn:xmpp:reactions:0}reactions") is not None, what="reaction")
    assert react.xml.find("{urn:xmpp:reactions:0}reactions/{urn:xmpp:reactions:0}reaction").text == "👍"
    reply = await b2.wait_for(lambda s: s.xml.find("{urn:xmpp:reply:0}reply") is not None, what="reply")
    assert reply.xml.find("{urn:xmpp:reply:0}reply").get("id") == "c1"
    ids = [s["id"] for s in b2.received if getattr(s, "name", "") == "message" and s["id"] in ("c1", "c2", "c3", "c4")]
    assert ids == ["c1", "c2", "c3", "c4"], f"out of order or duplicated: {ids}"

    # All four are in both archives.
    await asyncio.sleep(0.3)
    page = await mam_query(b2, {"with": alice.jid})
    assert page.bodies == ["see you at 8", "see you at 9", None, "bring snacks"], page.bodies


async def test_no_store_hint_keeps_a_message_out_of_the_log(xmpp):
    alice, bob = await xmpp.account("nsa"), await xmpp.account("nsb")
    b = await xmpp.connect(bob, resource="phone", plugins=PLUGINS)
    await b.close()
    a = await xmpp.connect(alice, plugins=PLUGINS)
    a.send_raw(f"<message to='{bob.jid}' type='chat'><body>ephemeral</body><no-store xmlns='urn:xmpp:hints'/></message>")
    a.send_raw(f"<message to='{bob.jid}' type='chat'><body>kept</body></message>")
    await a.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    b2 = await xmpp.connect(bob, resource="phone", plugins=PLUGINS)
    await b2.wait_message(lambda m: m["body"] == "kept")
    await asyncio.sleep(0.5)
    assert not b2.matching(lambda s: getattr(s, "name", "") == "message" and s["body"] == "ephemeral")
