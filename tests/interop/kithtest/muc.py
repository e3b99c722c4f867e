"""Group chat (XEP-0045) helpers: slixmpp's xep_0045 plugin does the joining and
the admin/owner requests; the helpers here only name rooms, read status codes and
run archive queries on a room (the result messages come from the room's JID)."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from slixmpp.stanza import Message

from .xmpp import DEFAULT_PLUGINS

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = "http://jabber.org/protocol/muc#user"
NS_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_OWNER = "http://jabber.org/protocol/muc#owner"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_XDATA = "jabber:x:data"
NS_FORWARD = "urn:xmpp:forward:0"
NS_INVITE = "urn:kith:group-invite:0"
NS_SID = "urn:xmpp:sid:0"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_MODERATE = "urn:xmpp:message-moderate:1"

PLUGINS = DEFAULT_PLUGINS + ("xep_0045", "xep_0004")
SERVICE = "conference.localhost"


def new_room(prefix: str = "g") -> str:
    return f"{prefix}{secrets.token_hex(4)}@{SERVICE}"


def status_codes(presence) -> set[str]:
    x = presence.xml.find(f"{{{NS_USER}}}x")
    if x is None:
        return set()
    return {s.get("code") for s in x.findall(f"{{{NS_USER}}}status")}


def muc_item(presence) -> dict:
    item = presence.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}item")
    return dict(item.attrib) if item is not None else {}


def is_groupchat(body: str):
    return lambda m: isinstance(m, Message) and m["type"] == "groupchat" and m["body"] == body


def room_stanza_id(msg, room: str) -> str | None:
    for sid in msg.xml.findall(f"{{{NS_SID}}}stanza-id"):
        if sid.get("by") == room:
            return sid.get("id")
    return None


async def join(client, room: str, nick: str, **kwargs):
    """Joins (creating the room if needed); returns slixmpp's join result."""
    return await client.plugin["xep_0045"].join_muc_wait(room, nick, timeout=15, **kwargs)


async def add_members(client, room: str, *jids: str, affiliation: str = "member") -> None:
    for jid in jids:
        await client.plugin["xep_0045"].set_affiliation(room, affiliation, jid=jid, timeout=10)


async def configure(client, room: str, **fields) -> None:
    """Submits the room's configuration form with these fields changed
    (`membersonly=False` sets `muc#roomconfig_membersonly`)."""
    form = await client.plugin["xep_0045"].get_room_config(room, timeout=10)
    form["type"] = "submit"
    for name, value in fields.items():
        form.field[f"muc#roomconfig_{name}"]["value"] = value
    await client.plugin["xep_0045"].set_room_config(room, form, timeout=10)


@dataclass
class RoomPage:
    ids: list[str]
    bodies: list[str | None]
    complete: bool
    last: str | None
    count: int | None


async def room_archive(client, room: str, rsm: dict | None = None) -> RoomPage:
    """A XEP-0313 query on the room's archive."""
    qid = secrets.token_hex(6)
    iq = client.Iq()
    iq["type"] = "set"
    iq["to"] = room
    query = ET.SubElement(iq.xml, f"{{{NS_MAM}}}query", queryid=qid)
    if rsm:
        s = ET.SubElement(query, f"{{{NS_RSM}}}set")
        for name, text in rsm.items():
            ET.SubElement(s, f"{{{NS_RSM}}}{name}").text = text
    res = await iq.send(timeout=15)
    ids, bodies = [], []
    for st in client.received:
        if not isinstance(st, Message):
            continue
        r = st.xml.find(f"{{{NS_MAM}}}result")
        if r is not None and r.get("queryid") == qid:
            assert st["from"].bare == room, f"result from {st['from']}"
            ids.append(r.get("id"))
            msg = r.find(f"{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")
            bodies.append(msg.findtext("{jabber:client}body") if msg is not None else None)
    fin = res.xml.find(f"{{{NS_MAM}}}fin")
    rset = fin.find(f"{{{NS_RSM}}}set")
    count = rset.findtext(f"{{{NS_RSM}}}count") if rset is not None else None
    return RoomPage(ids, bodies, fin.get("complete") in ("true", "1"),
                    rset.findtext(f"{{{NS_RSM}}}last") if rset is not None else None,
                    int(count) if count is not None else None)


async def invite_iq(client, to: str, name: str, kind: str = "set", **attrs) -> ET.Element:
    """An `urn:kith:group-invite:0` request; returns the result's payload (or None)."""
    iq = client.Iq()
    iq["type"] = kind
    iq["to"] = to
    ET.SubElement(iq.xml, f"{{{NS_INVITE}}}{name}", **attrs)
    res = await iq.send(timeout=10)
    children = list(res.xml)
    return children[0] if children else None
