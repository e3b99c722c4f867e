"""WhatsApp groups on XEP-0045: persistent members-only rooms whose messages reach
every member through their inbox log, joined or not, online or not; membership
governs what they see; invite links; announcement groups; delete for everyone."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError, PresenceError

from kithtest.muc import (NS_INVITE, NS_MODERATE, NS_RETRACT, NS_USER, PLUGINS,
                          add_members, configure, invite_iq, is_groupchat, join, new_room,
                          room_archive, room_stanza_id)
from kithtest.xmpp import ClientPool, iq_error_condition, error_condition


async def group_of_three(xmpp, prefix: str):
    """Alice creates a group and adds Bob and Carol; all three are in the room."""
    alice, bob, carol = [await xmpp.account(prefix + n) for n in "abc"]
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    c = await xmpp.connect(carol, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await add_members(a, room, bob.jid, carol.jid)
    await join(b, room, "bob")
    await join(c, room, "carol")
    return room, (alice, bob, carol), (a, b, c)


async def test_a_group_of_three_exchange_messages(xmpp):
    room, _, clients = await group_of_three(xmpp, "gx")
    a, b, c = clients
    for sender, text in ((a, "hi from alice"), (b, "hi from bob"), (c, "hi from carol")):
        sender.send_raw(f"<message to='{room}' type='groupchat' id='{text[-5:]}'><body>{text}</body>"
                        f"<origin-id xmlns='urn:xmpp:sid:0' id='o-{text[-5:]}'/></message>")
        for receiver in clients:
            got = await receiver.wait_message(is_groupchat(text), what=text)
            assert got["from"].bare == room
            assert got["from"].resource == text.split()[-1]
            # XEP-0359: the room's archive id; XEP-0421: an occupant id.
            assert room_stanza_id(got, room)
            assert got.xml.find("{urn:xmpp:occupant-id:0}occupant-id") is not None
            if receiver is sender:
                # The sender's reflection carries its origin-id, so clients dedupe.
                assert got.xml.find("{urn:xmpp:sid:0}origin-id").get("id") == f"o-{text[-5:]}"
    # Each got each message once.
    for receiver in clients:
        assert len(receiver.matching(lambda m: m["type"] == "groupchat" and m["body"].startswith("hi from"))) == 3


async def test_an_offline_member_gets_the_messages_in_order_at_login(xmpp):
    alice, dave = await xmpp.account("goa"), await xmpp.account("god")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    # Dave is a member but has never joined the room and is offline.
    await add_members(a, room, dave.jid)
    for i in range(5):
        a.send_raw(f"<message to='{room}' type='groupchat'><body>update {i}</body></message>")
        await a.wait_message(is_groupchat(f"update {i}"))
    d = await xmpp.connect(dave, plugins=PLUGINS)
    got = [await d.wait_message(is_groupchat(f"update {i}"), what=f"update {i}") for i in range(5)]
    bodies = [m["body"] for m in d.received if getattr(m, "name", "") == "message" and m["type"] == "groupchat"]
    assert bodies == [f"update {i}" for i in range(5)], bodies
    assert all(m.xml.find("{urn:xmpp:delay}delay") is not None for m in got)
    # The invitation that added him arrived too, from the room.
    invite = await d.wait_message(lambda m: m.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite") is not None)
    assert invite["from"].bare == room
    # A second device logging in later gets them once more (every device, once).
    d2 = await xmpp.connect(dave, resource="tablet", plugins=PLUGINS)
    await d2.wait_message(is_groupchat("update 4"))
    await asyncio.sleep(0.5)
    assert len(d2.matching(is_groupchat("update 4"))) == 1


async def test_a_removed_member_stops_receiving_and_cannot_rejoin(xmpp):
    room, (_alice, bob, _carol), (a, b, c) = await group_of_three(xmpp, "gr")
    a.send_raw(f"<message to='{room}' type='groupchat'><body>before</body></message>")
    await b.wait_message(is_groupchat("before"))
    await a.plugin["xep_0045"].set_affiliation(room, "none", jid=bob.jid, timeout=10)
    # Bob is told he was removed from a members-only room (status 321).
    gone = await b.wait_presence(lambda p: p["type"] == "unavailable" and p["from"].bare == room)
    assert "321" in {s.get("code") for s in gone.xml.findall(f"{{{NS_USER}}}x/{{{NS_USER}}}status")}
    a.send_raw(f"<message to='{room}' type='groupchat'><body>after</body></message>")
    await c.wait_message(is_groupchat("after"))
    await asyncio.sleep(0.5)
    assert not b.matching(is_groupchat("after"))
    # Nor at his next login.
    await b.close()
    b2 = await xmpp.connect(bob, plugins=PLUGINS)
    await asyncio.sleep(0.8)
    assert not b2.matching(is_groupchat("after"))
    with pytest.raises(PresenceError) as refused:
        await join(b2, room, "bob")
    assert refused.value.condition == "registration-required"
    with pytest.raises(IqError) as archive:
        await room_archive(b2, room)
    assert iq_error_condition(archive.value) == "forbidden"


async def test_a_non_member_can_neither_join_nor_read_the_archive(xmpp):
    alice, eve = await xmpp.account("gna"), await xmpp.account("gne")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    e = await xmpp.connect(eve, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    a.send_raw(f"<message to='{room}' type='groupchat'><body>members only</body></message>")
    await a.wait_message(is_groupchat("members only"))
    with pytest.raises(PresenceError) as refused:
        await join(e, room, "eve")
    assert refused.value.condition == "registration-required"
    with pytest.raises(IqError) as archive:
        await room_archive(e, room)
    assert iq_error_condition(archive.value) == "forbidden"
    # Sending without being in the room is refused too.
    e.send_raw(f"<message to='{room}' type='groupchat' id='x1'><body>let me in</body></message>")
    err = await e.wait_message(lambda m: m["type"] == "error" and m["id"] == "x1")
    assert error_condition(err) == "not-acceptable"
    # A banned user gets forbidden.
    await a.plugin["xep_0045"].set_affiliation(room, "outcast", jid=eve.jid, timeout=10)
    with pytest.raises(PresenceError) as banned:
        await join(e, room, "eve2")
    assert banned.value.condition == "forbidden"


async def test_invite_link_flow(xmpp):
    alice, fred, gina = [await xmpp.account(n) for n in ("gia", "gif", "gig")]
    a = await xmpp.connect(alice, plugins=PLUGINS)
    f = await xmpp.connect(fred, plugins=PLUGINS)
    g = await xmpp.connect(gina, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    link = await invite_iq(a, room, "create")
    token = link.get("token")
    assert link.get("url") == f"https://localhost/join/{token}"
    # A member who isn't an admin can't make links (the group's default).
    with pytest.raises(IqError) as not_admin:
        await invite_iq(f, room, "create")
    assert iq_error_condition(not_admin.value) == "forbidden"
    # Fred opens the link: he is a member and can join.
    joined = await invite_iq(f, "conference.localhost", "redeem", token=token)
    assert joined.get("room") == room
    await join(f, room, "fred")
    members = await a.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
    assert fred.jid in [str(m) for m in members]
    # Unknown tokens and revoked links admit nobody.
    with pytest.raises(IqError) as unknown:
        await invite_iq(g, "conference.localhost", "redeem", token="nope")
    assert iq_error_condition(unknown.value) == "item-not-found"
    await invite_iq(a, room, "revoke", token=token)
    with pytest.raises(IqError) as revoked:
        await invite_iq(g, "conference.localhost", "redeem", token=token)
    assert iq_error_condition(revoked.value) == "forbidden"
    with pytest.raises(PresenceError):
        await join(g, room, "gina")
    listed = await invite_iq(a, room, "list", kind="get")
    assert [i.get("revoked") for i in listed.findall(f"{{{NS_INVITE}}}invite")] == ["true"]


async def test_an_announcement_group_refuses_a_members_message(xmpp):
    room, _, (a, b, c) = await group_of_three(xmpp, "gan")
    await configure(a, room, moderatedroom=True)
    # Bob loses his voice (XEP-0045 §7.4: a visitor in a moderated room).
    await b.wait_presence(lambda p: p["from"].resource == "bob" and p.xml.find(
        f"{{{NS_USER}}}x/{{{NS_USER}}}item").get("role") == "visitor")
    b.send_raw(f"<message to='{room}' type='groupchat' id='ann1'><body>can I talk?</body></message>")
    err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "ann1")
    assert error_condition(err) == "forbidden"
    a.send_raw(f"<message to='{room}' type='groupchat'><body>admins only here</body></message>")
    await c.wait_message(is_groupchat("admins only here"))
    await asyncio.sleep(0.3)
    assert not c.matching(is_groupchat("can I talk?"))


async def test_an_admin_deletes_a_message_for_everyone(xmpp):
    room, _, (a, b, c) = await group_of_three(xmpp, "gdel")
    b.send_raw(f"<message to='{room}' type='groupchat'><body>oops, wrong group</body></message>")
    got = await c.wait_message(is_groupchat("oops, wrong group"))
    sid = room_stanza_id(got, room)
    # A member can't moderate.
    iq = c.Iq()
    iq["type"] = "set"
    iq["to"] = room
    iq.append(ET.fromstring(f"<moderate xmlns='{NS_MODERATE}' id='{sid}'><retract xmlns='{NS_RETRACT}'/></moderate>"))
    with pytest.raises(IqError) as member:
        await iq.send(timeout=10)
    assert iq_error_condition(member.value) == "forbidden"
    iq = a.Iq()
    iq["type"] = "set"
    iq["to"] = room
    iq.append(ET.fromstring(f"<moderate xmlns='{NS_MODERATE}' id='{sid}'><retract xmlns='{NS_RETRACT}'/>"
                            "<reason>spam</reason></moderate>"))
    await iq.send(timeout=10)
    for client in (b, c):
        retraction = await client.wait_message(
            lambda m: m.xml.find(f"{{{NS_RETRACT}}}retract") is not None, what="retraction")
        assert retraction.xml.find(f"{{{NS_RETRACT}}}retract").get("id") == sid
    page = await room_archive(a, room)
    assert "oops, wrong group" not in page.bodies
    assert sid in page.ids, "the archive keeps a tombstone"


async def test_a_new_member_sees_history_from_joining_only(xmpp):
    alice, hal = await xmpp.account("gha"), await xmpp.account("ghh")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    a.send_raw(f"<message to='{room}' type='groupchat'><body>old news</body></message>")
    await a.wait_message(is_groupchat("old news"))
    await add_members(a, room, hal.jid)
    a.send_raw(f"<message to='{room}' type='groupchat'><body>fresh news</body></message>")
    await a.wait_message(is_groupchat("fresh news"))
    h = await xmpp.connect(hal, plugins=PLUGINS)
    _, _, _, history = await join(h, room, "hal")
    assert [m["body"] for m in history] == ["fresh news"]
    page = await room_archive(h, room)
    assert page.bodies == ["fresh news"]
    # The owner sees all of it.
    assert (await room_archive(a, room)).bodies == ["old news", "fresh news"]


async def test_receipts_and_markers_reach_the_sender(xmpp):
    room, (alice, _, _), (a, b, c) = await group_of_three(xmpp, "gmk")
    a.send_raw(f"<message to='{room}' type='groupchat' id='mk1'><body>read me</body>"
               "<markable xmlns='urn:xmpp:chat-markers:0'/></message>")
    got = await b.wait_message(is_groupchat("read me"))
    sid = room_stanza_id(got, room)
    await a.close()
    b.send_raw(f"<message to='{room}' type='groupchat'><displayed xmlns='urn:xmpp:chat-markers:0' id='{sid}'/></message>")
    await asyncio.sleep(0.5)
    # Carol, in the room, is not bothered with Bob's marker.
    assert not c.matching(lambda m: m.xml.find("{urn:xmpp:chat-markers:0}displayed") is not None)
    # Alice was offline and gets it at login.
    a2 = await xmpp.connect(alice, plugins=PLUGINS)
    marker = await a2.wait_message(lambda m: m.xml.find("{urn:xmpp:chat-markers:0}displayed") is not None)
    assert marker["from"] == f"{room}/bob"


async def test_read_markers_in_a_group_follow_the_read_receipts_setting(xmpp):
    """As in 1:1 chats: whoever turned read receipts off neither sends nor gets
    `<displayed/>` through the room; `<received/>` (✓✓) still flows."""
    room, _, (a, b, c) = await group_of_three(xmpp, "gmr")
    markers = "urn:xmpp:chat-markers:0"

    def privacy(client, **attrs):
        iq = client.Iq()
        iq["type"] = "set"
        ET.SubElement(iq.xml, "{urn:kith:privacy:0}privacy", **attrs)
        return iq.send(timeout=10)

    def marker_from(nick, kind, sid):
        return lambda m: m["from"] == f"{room}/{nick}" and (found := m.xml.find(f"{{{markers}}}{kind}")) is not None \
            and found.get("id") == sid

    await privacy(b, **{"read-receipts": "false"})
    a.send_raw(f"<message to='{room}' type='groupchat' id='mr1'><body>did you read it</body>"
               f"<markable xmlns='{markers}'/></message>")
    sid = room_stanza_id(await b.wait_message(is_groupchat("did you read it")), room)
    for client, nick in ((b, "bob"), (c, "carol")):
        client.send_raw(f"<message to='{room}' type='groupchat'><received xmlns='{markers}' id='{sid}'/></message>")
        client.send_raw(f"<message to='{room}' type='groupchat'><displayed xmlns='{markers}' id='{sid}'/></message>")
    await a.wait_message(marker_from("carol", "displayed", sid), what="carol's read marker")
    await a.wait_message(marker_from("bob", "received", sid), what="bob's received marker")
    await asyncio.sleep(0.5)
    assert not a.matching(marker_from("bob", "displayed", sid)), "bob's read marker is held back"

    # Bob doesn't get others' read markers either.
    b.send_raw(f"<message to='{room}' type='groupchat' id='mr2'><body>mine</body></message>")
    sid2 = room_stanza_id(await c.wait_message(is_groupchat("mine")), room)
    c.send_raw(f"<message to='{room}' type='groupchat'><received xmlns='{markers}' id='{sid2}'/></message>")
    c.send_raw(f"<message to='{room}' type='groupchat'><displayed xmlns='{markers}' id='{sid2}'/></message>")
    await b.wait_message(marker_from("carol", "received", sid2), what="carol's received marker at bob")
    await asyncio.sleep(0.5)
    assert not b.matching(marker_from("carol", "displayed", sid2))


async def test_the_member_limit_is_enforced(server_factory, backend):
    from kithtest.xmpp import ClientPool
    srv = server_factory.start("groups-small", backend, {"muc": {"max_members": 3}})
    pool = ClientPool(srv)
    try:
        owner = await pool.account("glo")
        others = [await pool.account(f"gl{i}") for i in range(3)]
        o = await pool.connect(owner, plugins=PLUGINS)
        room = new_room()
        await join(o, room, "owner")
        await add_members(o, room, others[0].jid, others[1].jid)
        with pytest.raises(IqError) as full:
            await add_members(o, room, others[2].jid)
        assert iq_error_condition(full.value) == "not-allowed"
        members = await o.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
        assert others[2].jid not in [str(m) for m in members]
    finally:
        await pool.close_all()
        server_factory.stop(srv)



async def test_mediated_invitations_add_members_only_when_allowed(xmpp):
    room, (alice, bob, carol), (a, b, c) = await group_of_three(xmpp, "ginv")
    ivy, jon = await xmpp.account("givy"), await xmpp.account("gjon")
    # Bob is a member; the group lets only admins add members: a forged invitation
    # is refused and changes nothing.
    b.send_raw(f"<message to='{room}' id='inv1'><x xmlns='{NS_USER}'><invite to='{ivy.jid}'/></x></message>")
    err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "inv1")
    assert error_condition(err) == "forbidden"
    members = await a.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
    assert ivy.jid not in [str(m) for m in members]
    # The admin's invitation makes Jon a member (§7.8.2), who then gets the invite.
    a.plugin["xep_0045"].invite(room, jon.jid, reason="join us")
    j = await xmpp.connect(jon, plugins=PLUGINS)
    invite = await j.wait_message(lambda m: m.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite") is not None)
    assert invite["from"].bare == room
    await join(j, room, "jon")


async def test_a_member_who_leaves_the_group_gets_nothing_more(xmpp):
    room, (_alice, bob, _carol), (a, b, c) = await group_of_three(xmpp, "glv")
    # Bob exits the group: he drops his own membership.
    await b.plugin["xep_0045"].set_affiliation(room, "none", jid=bob.jid, timeout=10)
    a.send_raw(f"<message to='{room}' type='groupchat'><body>after bob left</body></message>")
    await c.wait_message(is_groupchat("after bob left"))
    await asyncio.sleep(0.5)
    assert not b.matching(is_groupchat("after bob left"))
    with pytest.raises(IqError) as archive:
        await room_archive(b, room)
    assert iq_error_condition(archive.value) == "forbidden"


async def test_chat_states_reach_occupants_only_and_are_not_stored(xmpp):
    room, (_alice, _bob, carol), (a, b, c) = await group_of_three(xmpp, "gcs")
    # Carol leaves the room (stays a member) and goes offline.
    await c.close()
    a.send_raw(f"<message to='{room}' type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    typing = await b.wait_message(lambda m: m.xml.find("{http://jabber.org/protocol/chatstates}composing") is not None)
    assert typing["from"] == f"{room}/alice"
    a.send_raw(f"<message to='{room}' type='groupchat'><body>done typing</body></message>")
    c2 = await xmpp.connect(carol, plugins=PLUGINS)
    await c2.wait_message(is_groupchat("done typing"))
    assert not c2.matching(lambda m: m.xml.find("{http://jabber.org/protocol/chatstates}composing") is not None)


async def test_voice_request_in_an_announcement_group(xmpp):
    room, _, (a, b, c) = await group_of_three(xmpp, "gvr")
    await configure(a, room, moderatedroom=True)
    await b.wait_presence(lambda p: p["from"].resource == "bob" and p.xml.find(
        f"{{{NS_USER}}}x/{{{NS_USER}}}item").get("role") == "visitor")
    b.plugin["xep_0045"].request_voice(room, "participant")
    request = await a.wait_message(lambda m: m.xml.find("{jabber:x:data}x") is not None, what="voice request")
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in request.xml.iter("{jabber:x:data}field")}
    assert fields["muc#roomnick"] == "bob"
    # Only presence sent from now on counts (Bob's join presence said participant too).
    b.forget()
    a.send_raw(f"<message to='{room}'><x xmlns='jabber:x:data' type='submit'>"
               "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
               "<field var='muc#role'><value>participant</value></field>"
               "<field var='muc#roomnick'><value>bob</value></field>"
               "<field var='muc#request_allow'><value>true</value></field></x></message>")
    await b.wait_presence(lambda p: p["from"].resource == "bob" and p.xml.find(
        f"{{{NS_USER}}}x/{{{NS_USER}}}item").get("role") == "participant")
    b.send_raw(f"<message to='{room}' type='groupchat'><body>thanks for the voice</body></message>")
    await c.wait_message(is_groupchat("thanks for the voice"))


async def test_offline_members_are_owed_messages_across_restart_removal_and_destruction(
        server_factory, backend):
    """A group message is stored once, in the room's log, and copied into an
    offline member's log only when they connect (the room cursor). What each
    member is owed survives a restart, a member removed while offline still
    gets what came while they were one (and nothing after), and a destroyed
    room's messages still reach the members who were offline."""
    srv = server_factory.start("owed", backend)
    pool = ClientPool(srv)

    def group_bodies(client):
        return [m["body"] for m in client.received
                if getattr(m, "name", "") == "message" and m["type"] == "groupchat"
                and m["body"].startswith(("before", "after", "last"))]

    async def say(client, text):
        client.send_raw(f"<message to='{room}' type='groupchat'><body>{text}</body></message>")
        await client.wait_message(is_groupchat(text), what=text)

    try:
        alice, bob, carol = [await pool.account("gow" + n) for n in "abc"]
        a = await pool.connect(alice, plugins=PLUGINS)
        room = new_room()
        await join(a, room, "alice")
        await add_members(a, room, bob.jid, carol.jid)
        for i in range(3):
            await say(a, f"before restart {i}")
        await pool.close_all()
        await asyncio.to_thread(srv.restart)

        a = await pool.connect(alice, plugins=PLUGINS)
        await join(a, room, "alice")
        for i in range(3):
            await say(a, f"after restart {i}")
        await add_members(a, room, carol.jid, affiliation="none")
        await say(a, "after carol left")

        c = await pool.connect(carol, plugins=PLUGINS)
        await c.wait_message(is_groupchat("after restart 2"), what="carol's last owed message")
        await asyncio.sleep(0.5)
        expected = [f"before restart {i}" for i in range(3)] + [f"after restart {i}" for i in range(3)]
        assert group_bodies(c) == expected

        await say(a, "last words")
        await a.plugin["xep_0045"].destroy(room, timeout=10)
        b = await pool.connect(bob, plugins=PLUGINS)
        await b.wait_message(is_groupchat("last words"), what="bob's last owed message")
        await asyncio.sleep(0.5)
        assert group_bodies(b) == expected + ["after carol left", "last words"]
        assert all(m.xml.find("{urn:xmpp:delay}delay") is not None
                   for m in b.matching(is_groupchat("last words")))
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_a_resent_group_message_is_stored_and_delivered_once(server_factory, backend):
    """XEP-0359 §4 in a group: a client that resends a message with the same
    origin-id (after a reconnect it wasn't sure about) doesn't make the members
    see it twice, also when the server restarted in between; the resending
    device gets the original's reflection back; another sender's message with
    the same origin-id is a message of its own."""
    srv = server_factory.start("resent", backend)
    pool = ClientPool(srv)

    def send(client, body, origin):
        client.send_raw(f"<message to='{room}' type='groupchat'><body>{body}</body>"
                        f"<origin-id xmlns='urn:xmpp:sid:0' id='{origin}'/></message>")

    def bodies(client):
        return [m["body"] for m in client.received
                if getattr(m, "name", "") == "message" and m["type"] == "groupchat" and m["body"]]

    try:
        alice, bob, carol = [await pool.account("grs" + n) for n in "abc"]
        a = await pool.connect(alice, plugins=PLUGINS)
        b = await pool.connect(bob, plugins=PLUGINS)
        room = new_room()
        await join(a, room, "alice")
        await add_members(a, room, bob.jid, carol.jid)
        await join(b, room, "bob")
        # Carol is a member who stays offline: her copies are owed, once each.
        for _ in range(3):
            send(a, "only once", "dup-1")
        await b.wait_message(is_groupchat("only once"), what="only once")
        send(b, "bob's own", "dup-1")
        await a.wait_message(is_groupchat("bob's own"), what="bob's own")
        send(a, "next", "dup-2")
        await b.wait_message(is_groupchat("next"), what="next")
        await a.wait_message(is_groupchat("next"), what="alice's reflection of next")
        await asyncio.sleep(0.5)
        assert bodies(b).count("only once") == 1, bodies(b)
        assert bodies(a).count("bob's own") == 1, bodies(a)
        # Each resend is answered with the original's reflection (one archive id).
        reflections = a.matching(is_groupchat("only once"))
        assert len(reflections) == 3, [m["body"] for m in reflections]
        assert len({room_stanza_id(m, room) for m in reflections}) == 1

        # The room remembers what it stored across a restart (read from its log).
        await pool.close_all()
        await asyncio.to_thread(srv.restart)
        a = await pool.connect(alice, plugins=PLUGINS)
        b = await pool.connect(bob, plugins=PLUGINS)
        await join(a, room, "alice")
        await join(b, room, "bob")
        send(a, "only once", "dup-1")
        send(a, "after restart", "dup-3")
        await b.wait_message(is_groupchat("after restart"), what="after restart")
        await asyncio.sleep(0.5)
        # Once: in the history the room sent at the join, not again live.
        assert bodies(b).count("only once") == 1, bodies(b)

        c = await pool.connect(carol, plugins=PLUGINS)
        await c.wait_message(is_groupchat("after restart"), what="carol's owed messages")
        await asyncio.sleep(0.5)
        assert bodies(c) == ["only once", "bob's own", "next", "after restart"], bodies(c)
        page = await room_archive(a, room, {"max": "50"})
        assert page.bodies.count("only once") == 1, page.bodies
        assert page.bodies.count("bob's own") == 1, page.bodies
    finally:
        await pool.close_all()
        server_factory.stop(srv)
