"""Helpers for the PEP tests (XEP-0163 over XEP-0060): clients with slixmpp's own
pubsub/PEP/caps plugins, +notify interests announced through XEP-0115 caps, and
readers of event notifications and pubsub errors as a client sees them."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from slixmpp.plugins.xep_0004 import Form
from slixmpp.stanza import Message

from kithtest.xmpp import DEFAULT_PLUGINS, NS_CLIENT, NS_STANZAS, local

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DELAY = "urn:xmpp:delay"

PEP_PLUGINS = DEFAULT_PLUGINS + (
    "xep_0004",  # data forms
    "xep_0060",  # pubsub
    "xep_0115",  # entity capabilities
    "xep_0163",  # PEP
    "xep_0223",  # persistent storage of private data (publish-options)
    "xep_0084",  # user avatar
    "xep_0172",  # user nickname
)


async def connect_pep(xmpp, account, interests=(), *, plugins=PEP_PLUGINS, resource="", label=None):
    """Log in, announce `interests` as NODE+notify in XEP-0115 caps, then send
    initial presence (so the server sees the caps in it)."""
    c = await xmpp.connect(account, plugins=plugins, presence=False, resource=resource, label=label)
    # XEP-0030 §3.1: every entity has an identity. (Without one, slixmpp's caps
    # hash starts with an extra '<' and does not verify, so the server then
    # believes the answer only for this one resource, XEP-0115 §5.4.)
    c.plugin["xep_0030"].add_identity(category="client", itype="pc", name="kith interop", jid=c.boundjid)
    for node in interests:
        c.plugin["xep_0030"].add_feature(f"{node}+notify")
    await c.plugin["xep_0115"].update_caps(broadcast=False)
    c.send_presence()
    return c


def publish_options(**fields) -> Form:
    """A submitted XEP-0223 publish-options form (pubsub#<name> = value)."""
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for name, value in fields.items():
        form.add_field(var=f"pubsub#{name}", value=value)
    return form


def payload(ns: str, name: str, text: str | None = None, **attrs) -> ET.Element:
    el = ET.Element(f"{{{ns}}}{name}", {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def event_of(msg) -> ET.Element | None:
    return msg.xml.find(f"{{{NS_EVENT}}}event")


def is_event(msg, node: str, owner: str | None = None) -> bool:
    """A pubsub event notification about `node` (from `owner`'s bare JID)."""
    if not isinstance(msg, Message):
        return False
    ev = event_of(msg)
    if ev is None:
        return False
    if owner is not None and msg["from"].full != owner:
        return False
    return any(child.get("node") == node for child in ev)


def event_item_ids(msg) -> list[str]:
    ev = event_of(msg)
    return [i.get("id") for i in ev.iter(f"{{{NS_EVENT}}}item")]


def event_retract_ids(msg) -> list[str]:
    ev = event_of(msg)
    return [i.get("id") for i in ev.iter(f"{{{NS_EVENT}}}retract")]


NS_VCARD_UPDATE = "vcard-temp:x:update"


def photo_hash(presence) -> str | None:
    """The XEP-0153 photo hash a presence carries, if any."""
    x = presence.xml.find(f"{{{NS_VCARD_UPDATE}}}x")
    if x is None:
        return None
    return x.findtext(f"{{{NS_VCARD_UPDATE}}}photo")


def result_items(iq) -> list[ET.Element]:
    """The <item/>s of a pubsub items result."""
    return iq.xml.findall(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items/{{{NS_PUBSUB}}}item")


def pubsub_error(exc) -> tuple[str | None, str | None]:
    """(defined condition, pubsub#errors application condition) of an IqError."""
    iq = exc.iq
    err = iq.xml.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        return None, None
    condition = app = None
    for child in err:
        if child.tag.startswith(f"{{{NS_STANZAS}}}") and local(child.tag) != "text":
            condition = local(child.tag)
        elif child.tag.startswith(f"{{{NS_PUBSUB_ERRORS}}}"):
            app = local(child.tag)
    return condition, app


async def nothing_matching(client, pred, seconds: float = 1.5) -> bool:
    """True if no received stanza matches `pred` within `seconds`."""
    await asyncio.sleep(seconds)
    return not client.matching(pred)


def config_values(form_xml: ET.Element) -> dict[str, list[str]]:
    """var -> values of a data form element."""
    ns = "jabber:x:data"
    out = {}
    for field in form_xml.findall(f"{{{ns}}}field"):
        out[field.get("var")] = [v.text or "" for v in field.findall(f"{{{ns}}}value")]
    return out
