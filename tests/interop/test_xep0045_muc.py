"""XEP-0045 Multi-User Chat as a standard client sees it: discovery, creating a
room (status codes 110/100/201), nick conflicts, the subject, kick and ban, the
configuration form, self-ping (XEP-0410) and MAM on the room (XEP-0313 §6)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError, PresenceError

from kithtest.muc import (PLUGINS, SERVICE, add_members, is_groupchat, join, muc_item,
                          new_room, room_archive, status_codes)
from kithtest.xmpp import iq_error_condition


async def test_the_service_is_discoverable(xmpp):
    alice = await xmpp.account("mda")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    items = await a.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
    assert SERVICE in [i[0] for i in items["disco_items"]["items"]]
    info = await a.plugin["xep_0030"].get_info(jid=SERVICE, timeout=10)
    assert "http://jabber.org/protocol/muc" in info["disco_info"]["features"]
    assert ("conference", "text") in [(i[0], i[1]) for i in info["disco_info"]["identities"]]


async def test_creating_a_room_gives_group_defaults(xmpp):
    alice = await xmpp.account("mca")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    room = new_room()
    own, subject, occupants, history = await join(a, room, "alice")
    # §10.1.1: 201 (created), 110 (self), 100 (real JIDs visible).
    assert {"110", "201", "100"} <= status_codes(own)
    item = muc_item(own)
    assert (item["affiliation"], item["role"]) == ("owner", "moderator")
    assert own.xml.find("{urn:xmpp:occupant-id:0}occupant-id") is not None
    info = await a.plugin["xep_0030"].get_info(jid=room, timeout=10)
    features = set(info["disco_info"]["features"])
    assert {"http://jabber.org/protocol/muc", "muc_membersonly", "muc_persistent", "muc_hidden",
            "muc_nonanonymous", "urn:xmpp:mam:2", "urn:xmpp:occupant-id:0"} <= features
    # The room survives its last occupant (persistent): rejoining is not a creation.
    a.plugin["xep_0045"].leave_muc(room, "alice")
    await a.wait_presence(lambda p: p["type"] == "unavailable" and p["from"].bare == room)
    again, *_ = await join(a, room, "alice")
    assert "201" not in status_codes(again)


async def test_nick_conflict(xmpp):
    alice, bob = await xmpp.account("mna"), await xmpp.account("mnb")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await add_members(a, room, bob.jid)
    with pytest.raises(PresenceError) as taken:
        await join(b, room, "alice")
    assert taken.value.condition == "conflict"
    own, _, occupants, _ = await join(b, room, "bob")
    assert own["from"].resource == "bob"
    assert "alice" in [p["from"].resource for p in occupants]


async def test_subject_is_kept_and_only_admins_change_it(xmpp):
    alice, bob = await xmpp.account("msa"), await xmpp.account("msb")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await add_members(a, room, bob.jid)
    a.send_raw(f"<message to='{room}' type='groupchat'><subject>Trip planning</subject></message>")
    await a.wait_message(lambda m: m["subject"] == "Trip planning")
    _, subject, _, _ = await join(b, room, "bob")
    assert subject["subject"] == "Trip planning"
    b.send_raw(f"<message to='{room}' type='groupchat' id='s2'><subject>Mine now</subject></message>")
    err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "s2")
    assert err["error"]["condition"] == "forbidden"


async def test_kick_and_ban(xmpp):
    alice, bob, carol = [await xmpp.account(n) for n in ("mka", "mkb", "mkc")]
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    c = await xmpp.connect(carol, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await add_members(a, room, bob.jid, carol.jid)
    await join(b, room, "bob")
    await join(c, room, "carol")
    # A member can't kick (§8.2: only moderators).
    with pytest.raises(IqError) as refused:
        await c.plugin["xep_0045"].set_role(room, "bob", "none", timeout=10)
    assert iq_error_condition(refused.value) == "forbidden"
    await a.plugin["xep_0045"].set_role(room, "bob", "none", timeout=10)
    kicked = await b.wait_presence(lambda p: p["type"] == "unavailable" and "307" in status_codes(p))
    assert "110" in status_codes(kicked)
    seen = await c.wait_presence(lambda p: p["type"] == "unavailable" and p["from"].resource == "bob")
    assert "307" in status_codes(seen)
    # Kicked is not banned: Bob is still a member and comes back.
    await join(b, room, "bob")
    await a.plugin["xep_0045"].set_affiliation(room, "outcast", jid=bob.jid, timeout=10)
    banned = await b.wait_presence(lambda p: p["type"] == "unavailable" and "301" in status_codes(p))
    assert muc_item(banned)["affiliation"] == "outcast"
    with pytest.raises(PresenceError) as again:
        await join(b, room, "bob")
    assert again.value.condition == "forbidden"
    # Admins can't be kicked by admins (§8.2: not-allowed); the last owner stays.
    with pytest.raises(IqError) as last_owner:
        await a.plugin["xep_0045"].set_affiliation(room, "member", jid=alice.jid, timeout=10)
    assert iq_error_condition(last_owner.value) == "conflict"


async def test_configuration_form_round_trip(xmpp):
    alice, bob = await xmpp.account("mfa"), await xmpp.account("mfb")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    form = await a.plugin["xep_0045"].get_room_config(room, timeout=10)
    fields = form.get_fields()
    for var in ("muc#roomconfig_roomname", "muc#roomconfig_roomdesc", "muc#roomconfig_persistentroom",
                "muc#roomconfig_membersonly", "muc#roomconfig_moderatedroom",
                "muc#roomconfig_changesubject", "muc#roomconfig_whois",
                "muc#roomconfig_allowinvites", "muc#roomconfig_maxusers"):
        assert var in fields, var
    assert fields["muc#roomconfig_membersonly"]["value"] is True
    form["type"] = "submit"
    form.field["muc#roomconfig_roomname"]["value"] = "Book club"
    form.field["muc#roomconfig_membersonly"]["value"] = False
    form.field["muc#roomconfig_publicroom"]["value"] = True
    await a.plugin["xep_0045"].set_room_config(room, form, timeout=10)
    again = (await a.plugin["xep_0045"].get_room_config(room, timeout=10)).get_fields()
    assert again["muc#roomconfig_roomname"]["value"] == "Book club"
    assert again["muc#roomconfig_membersonly"]["value"] is False
    info = await b.plugin["xep_0030"].get_info(jid=room, timeout=10)
    assert "muc_open" in info["disco_info"]["features"]
    assert ("conference", "text", "Book club") in [(i[0], i[1], i[3]) for i in info["disco_info"]["identities"]]
    listed = await b.plugin["xep_0030"].get_items(jid=SERVICE, timeout=10)
    assert room in [i[0] for i in listed["disco_items"]["items"]]
    # An open room lets Bob in; a non-owner can't configure.
    await join(b, room, "bob")
    with pytest.raises(IqError) as refused:
        await b.plugin["xep_0045"].get_room_config(room, timeout=10)
    assert iq_error_condition(refused.value) == "forbidden"


async def test_self_ping(xmpp):
    alice = await xmpp.account("mpa")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await a.plugin["xep_0199"].ping(jid=f"{room}/alice", timeout=10)
    # XEP-0410: not joined under that nick → not-acceptable.
    with pytest.raises(IqError) as gone:
        await a.plugin["xep_0199"].send_ping(jid=f"{room}/someone", timeout=10)
    assert iq_error_condition(gone.value) == "not-acceptable"


async def test_room_archive_pages(xmpp):
    alice = await xmpp.account("mma")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    for i in range(5):
        a.send_raw(f"<message to='{room}' type='groupchat'><body>note {i}</body></message>")
        await a.wait_message(is_groupchat(f"note {i}"))
    first = await room_archive(a, room, {"max": "2"})
    assert first.bodies == ["note 0", "note 1"] and not first.complete
    assert first.count == 5
    second = await room_archive(a, room, {"max": "2", "after": first.last})
    assert second.bodies == ["note 2", "note 3"]
    last = await room_archive(a, room, {"max": "2", "before": None})
    assert last.bodies == ["note 3", "note 4"]
    # History on join honours maxstanzas (§7.2.15).
    a.plugin["xep_0045"].leave_muc(room, "alice")
    await a.wait_presence(lambda p: p["type"] == "unavailable" and p["from"].bare == room)
    _, _, _, history = await join(a, room, "alice", maxstanzas=2)
    assert [m["body"] for m in history] == ["note 3", "note 4"]


async def test_raw_join_without_nick_is_refused(xmpp):
    alice = await xmpp.account("mra")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    room = new_room()
    a.send_raw(f"<presence to='{room}' id='nonick'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    err = await a.wait_presence(lambda p: p["type"] == "error" and p["id"] == "nonick")
    assert err["error"]["condition"] == "jid-malformed"
    # Malformed admin requests change nothing.
    await join(a, room, "alice")
    iq = a.Iq()
    iq["type"] = "set"
    iq["to"] = room
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/muc#admin'>"
                            "<item affiliation='emperor' jid='x@localhost'/></query>"))
    with pytest.raises(IqError) as bad:
        await iq.send(timeout=10)
    assert iq_error_condition(bad.value) == "bad-request"


async def test_nick_change(xmpp):
    alice, bob = await xmpp.account("mnca"), await xmpp.account("mncb")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await add_members(a, room, bob.jid)
    await join(b, room, "bob")
    b.send_raw(f"<presence to='{room}/robert'/>")
    # §7.6: unavailable with 303 and the new nick, then available under it.
    changed = await a.wait_presence(lambda p: p["type"] == "unavailable" and "303" in status_codes(p))
    assert muc_item(changed)["nick"] == "robert"
    await a.wait_presence(lambda p: p["from"].resource == "robert" and p["type"] == "available")
    # The new nick is taken now.
    a.send_raw(f"<presence to='{room}/robert' id='nc'/>")
    err = await a.wait_presence(lambda p: p["type"] == "error" and p["id"] == "nc")
    assert err["error"]["condition"] == "conflict"


async def test_room_vcard_avatar(xmpp):
    alice, bob = await xmpp.account("mva"), await xmpp.account("mvb")
    a = await xmpp.connect(alice, plugins=PLUGINS)
    b = await xmpp.connect(bob, plugins=PLUGINS)
    room = new_room()
    await join(a, room, "alice")
    await add_members(a, room, bob.jid)
    iq = a.Iq()
    iq["type"] = "set"
    iq["to"] = room
    iq.append(ET.fromstring("<vCard xmlns='vcard-temp'><FN>Trip</FN><PHOTO><TYPE>image/png</TYPE>"
                            "<BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard>"))
    await iq.send(timeout=10)
    got = await b.plugin["xep_0054"].get_vcard(jid=room, timeout=10)
    assert got["vcard_temp"]["FN"] == "Trip"
    # A member of a group whose info only admins edit can't change it.
    iq = b.Iq()
    iq["type"] = "set"
    iq["to"] = room
    iq.append(ET.fromstring("<vCard xmlns='vcard-temp'><FN>Mine</FN></vCard>"))
    with pytest.raises(IqError) as refused:
        await iq.send(timeout=10)
    assert iq_error_condition(refused.value) == "forbidden"
