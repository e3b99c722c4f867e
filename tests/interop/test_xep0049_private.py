"""XEP-0049: Private XML Storage (jabber:iq:private)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ElementBase

from kithtest.xmpp import iq_error_condition

NS_PRIVATE = "jabber:iq:private"


class Prefs(ElementBase):
    name = "exodus"
    namespace = "exodus:prefs"
    plugin_attrib = "exodus_prefs"
    interfaces = {"defaultnick"}
    sub_interfaces = interfaces


class Other(ElementBase):
    name = "settings"
    namespace = "urn:example:kith-test:settings"
    plugin_attrib = "kith_settings"
    interfaces = {"theme"}
    sub_interfaces = interfaces


def setup(client):
    client.plugin["xep_0049"].register(Prefs)
    client.plugin["xep_0049"].register(Other)


def stored(iq, ns: str, name: str) -> ET.Element | None:
    return iq.xml.find(f"{{{NS_PRIVATE}}}query/{{{ns}}}{name}")


async def test_store_and_retrieve(xmpp):
    me = await xmpp.account("priv")
    a = await xmpp.connect(me)
    setup(a)
    p = Prefs()
    p["defaultnick"] = "Hamlet 🎭"
    await a.plugin["xep_0049"].store(p, timeout=10)
    o = Other()
    o["theme"] = "dark"
    await a.plugin["xep_0049"].store(o, timeout=10)

    got = await a.plugin["xep_0049"].retrieve("exodus_prefs", timeout=10)
    el = stored(got, "exodus:prefs", "exodus")
    assert el is not None, f"stored data not returned: {got}"
    assert el.findtext("{exodus:prefs}defaultnick") == "Hamlet 🎭"
    # one namespace per query: the other stored fragment is not mixed in
    assert stored(got, Other.namespace, Other.name) is None

    got = await a.plugin["xep_0049"].retrieve("kith_settings", timeout=10)
    assert stored(got, Other.namespace, Other.name).findtext(f"{{{Other.namespace}}}theme") == "dark"

    # overwrite
    p2 = Prefs()
    p2["defaultnick"] = "Ophelia"
    await a.plugin["xep_0049"].store(p2, timeout=10)
    got = await a.plugin["xep_0049"].retrieve("exodus_prefs", timeout=10)
    assert stored(got, "exodus:prefs", "exodus").findtext("{exodus:prefs}defaultnick") == "Ophelia"


async def test_persists_across_sessions_and_is_per_user(xmpp):
    me, other = await xmpp.account("privp"), await xmpp.account("privo")
    a = await xmpp.connect(me)
    setup(a)
    p = Prefs()
    p["defaultnick"] = "Kept"
    await a.plugin["xep_0049"].store(p, timeout=10)
    await a.close()

    a2 = await xmpp.connect(me)
    setup(a2)
    got = await a2.plugin["xep_0049"].retrieve("exodus_prefs", timeout=10)
    assert stored(got, "exodus:prefs", "exodus").findtext("{exodus:prefs}defaultnick") == "Kept"

    b = await xmpp.connect(other)
    setup(b)
    got = await b.plugin["xep_0049"].retrieve("exodus_prefs", timeout=10)
    el = stored(got, "exodus:prefs", "exodus")
    assert el is None or el.findtext("{exodus:prefs}defaultnick") is None, \
        "another user's private data was returned"


async def test_other_users_private_data_is_forbidden(xmpp):
    me, victim = await xmpp.account("privm"), await xmpp.account("privv")
    v = await xmpp.connect(victim)
    setup(v)
    p = Prefs()
    p["defaultnick"] = "victim secret"
    await v.plugin["xep_0049"].store(p, timeout=10)

    a = await xmpp.connect(me)
    setup(a)
    for kind in ("get", "set"):
        iq = a.make_iq_get(ito=victim.jid) if kind == "get" else a.make_iq_set(ito=victim.jid)
        q = Prefs()
        if kind == "set":
            q["defaultnick"] = "overwritten"
        iq["private"].append(q)
        try:
            res = await iq.send(timeout=10)
            raise AssertionError(f"{kind} of another user's private data succeeded: {res}")
        except IqError as e:
            assert iq_error_condition(e) in ("forbidden", "service-unavailable"), e
    got = await v.plugin["xep_0049"].retrieve("exodus_prefs", timeout=10)
    assert stored(got, "exodus:prefs", "exodus").findtext("{exodus:prefs}defaultnick") == "victim secret"


async def test_query_without_child_is_rejected(xmpp):
    me = await xmpp.account("privempty")
    a = await xmpp.connect(me)
    iq = a.make_iq_set()
    iq.enable("private")
    try:
        await iq.send(timeout=10)
        raise AssertionError("private storage set without a child element was accepted")
    except IqError as e:
        assert iq_error_condition(e) in ("not-acceptable", "bad-request"), e
