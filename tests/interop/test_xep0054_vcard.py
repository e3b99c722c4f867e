"""XEP-0054: vcard-temp (profile)."""

from __future__ import annotations

from slixmpp.exceptions import IqError

from kithtest.xmpp import iq_error_condition

NS_VCARD = "vcard-temp"


def make_vcard(client, fn: str, nick: str, email: str, desc: str):
    vcard = client.plugin["xep_0054"].make_vcard()
    vcard["FN"] = fn
    vcard["NICKNAME"] = nick
    vcard["EMAIL"]["USERID"] = email
    vcard["EMAIL"]["INTERNET"] = True
    vcard["DESC"] = desc
    return vcard


def vcard_fields(iq) -> dict[str, str | None]:
    v = iq.xml.find(f"{{{NS_VCARD}}}vCard")
    assert v is not None, f"no <vCard xmlns='vcard-temp'/> in {iq}"
    return {
        "FN": v.findtext(f"{{{NS_VCARD}}}FN"),
        "NICKNAME": v.findtext(f"{{{NS_VCARD}}}NICKNAME"),
        "USERID": v.findtext(f"{{{NS_VCARD}}}EMAIL/{{{NS_VCARD}}}USERID"),
        "DESC": v.findtext(f"{{{NS_VCARD}}}DESC"),
    }


async def get_own_vcard(client):
    # slixmpp answers get_vcard() for our own JID from its local cache unless
    # local=False is passed; we want the server's copy.
    return await client.plugin["xep_0054"].get_vcard(None, local=False, timeout=10)


async def test_set_then_get_by_self_and_other(xmpp):
    me, other = await xmpp.account("card"), await xmpp.account("viewer")
    a = await xmpp.connect(me)
    v = make_vcard(a, "Zoë Ångström 🦊", "zoe", "zoe@example.org", "שלום — مرحبا")
    await a.plugin["xep_0054"].publish_vcard(v, timeout=10)
    want = {"FN": "Zoë Ångström 🦊", "NICKNAME": "zoe", "USERID": "zoe@example.org", "DESC": "שלום — مرحبا"}

    assert vcard_fields(await get_own_vcard(a)) == want
    b = await xmpp.connect(other)
    got = await b.plugin["xep_0054"].get_vcard(me.jid, cached=False, timeout=10)
    assert got["from"].full == me.jid, "the server answers for the bare JID"
    assert vcard_fields(got) == want

    # a later set replaces the whole vCard
    v2 = a.plugin["xep_0054"].make_vcard()
    v2["FN"] = "Zoë"
    await a.plugin["xep_0054"].publish_vcard(v2, timeout=10)
    again = vcard_fields(await b.plugin["xep_0054"].get_vcard(me.jid, cached=False, timeout=10))
    assert again == {"FN": "Zoë", "NICKNAME": None, "USERID": None, "DESC": None}


async def test_vcard_persists_across_sessions(xmpp):
    me = await xmpp.account("cardp")
    a = await xmpp.connect(me)
    v = a.plugin["xep_0054"].make_vcard()
    v["FN"] = "Persistent Person"
    await a.plugin["xep_0054"].publish_vcard(v, timeout=10)
    await a.close()
    a2 = await xmpp.connect(me)
    assert vcard_fields(await get_own_vcard(a2))["FN"] == "Persistent Person"


async def test_vcard_of_user_without_one(xmpp):
    """XEP-0054 §3.3: no vCard and no such user get the same error, which SHOULD
    be <service-unavailable/> or <item-not-found/>, so accounts can't be harvested."""
    me, other = await xmpp.account("cq"), await xmpp.account("blank")
    a = await xmpp.connect(me)
    conditions = []
    for target in (other.jid, f"nobody-{other.name}@localhost"):
        try:
            iq = await a.plugin["xep_0054"].get_vcard(target, cached=False, timeout=10)
        except IqError as e:
            conditions.append(iq_error_condition(e))
        else:
            v = iq.xml.find(f"{{{NS_VCARD}}}vCard")
            assert target == other.jid and v is not None and len(v) == 0, f"unexpected answer: {iq}"
            conditions.append("empty")
    assert conditions[1] in ("service-unavailable", "item-not-found"), conditions
    assert conditions[0] == conditions[1], f"a missing vCard and a missing user must look alike: {conditions}"


async def test_cannot_set_someone_elses_vcard(xmpp):
    me, victim = await xmpp.account("vandal"), await xmpp.account("vvictim")
    a = await xmpp.connect(me)
    v = a.plugin["xep_0054"].make_vcard()
    v["FN"] = "Hacked"
    try:
        await a.plugin["xep_0054"].publish_vcard(v, jid=victim.jid, timeout=10)
        set_refused = False
    except IqError as e:
        set_refused = True
        assert iq_error_condition(e) in ("forbidden", "not-allowed", "service-unavailable", "not-authorized"), e
    b = await xmpp.connect(victim)
    try:
        fields = vcard_fields(await get_own_vcard(b))
        assert fields["FN"] != "Hacked", "another user overwrote this user's vCard"
    except IqError as e:
        assert iq_error_condition(e) == "item-not-found"
    assert set_refused, "setting another user's vCard was answered with success"
