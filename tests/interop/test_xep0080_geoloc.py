"""XEP-0080 User Location: live location sharing over PEP (XEP-0163) with the
chosen contacts for a limited time: the `whitelist` access model with the
chosen contacts as affiliations, `pubsub#item_expire` (XEP-0060 §16.4.4) as the
end time, and explicit subscriptions (XEP-0060 §6.1, §6.2, §5.6).

A location *message* (XEP-0080 payload plus a `geo:` URI body) is tested in
test_media.py (`test_a_location_is_delivered_and_archived_intact`).

Driven by slixmpp's own xep_0080/xep_0060/xep_0163 plugins."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp.exceptions import IqError

from kithtest.pep import (
    PEP_PLUGINS,
    connect_pep,
    event_item_ids,
    event_retract_ids,
    is_event,
    nothing_matching,
    pubsub_error,
    publish_options,
    result_items,
)
from kithtest.xmpp import make_friends

NS_GEOLOC = "http://jabber.org/protocol/geoloc"
GEO_PLUGINS = PEP_PLUGINS + ("xep_0080",)


def pubsub(c):
    return c.plugin["xep_0060"]


def share(c, lat: float, lon: float, **options):
    """A live-location update, the way a client publishes one (XEP-0080 §4 via
    PEP, item id `current`), with XEP-0223 publish-options."""
    return c.plugin["xep_0080"].publish_location(
        lat=lat, lon=lon, accuracy=10, options=publish_options(**options) if options else None,
        timeout=10)


def lat_of(msg) -> str | None:
    ev = msg.xml.find("{http://jabber.org/protocol/pubsub#event}event")
    return ev.findtext(f".//{{{NS_GEOLOC}}}geoloc/{{{NS_GEOLOC}}}lat")


async def test_live_location_reaches_the_chosen_contact_until_it_ends(xmpp):
    owner_acct, chosen_acct, other_acct = (
        await xmpp.account("geoown"), await xmpp.account("geochosen"), await xmpp.account("geoother"))
    owner = await connect_pep(xmpp, owner_acct, plugins=GEO_PLUGINS)
    chosen = await connect_pep(xmpp, chosen_acct, [NS_GEOLOC], plugins=GEO_PLUGINS)
    other = await connect_pep(xmpp, other_acct, [NS_GEOLOC], plugins=GEO_PLUGINS)
    # Both are contacts with presence subscriptions: only the chosen one may see.
    await make_friends(owner, chosen)
    await make_friends(owner, other)
    await asyncio.sleep(1.0)  # the server asks each new caps ver once

    # Share for 4 seconds with one contact: the first update creates the node
    # (whitelist, item_expire), then the contact is whitelisted.
    live = {"access_model": "whitelist", "item_expire": "4"}
    await share(owner, 52.5163, 13.3777, **live)
    await pubsub(owner).modify_affiliations(owner_acct.jid, NS_GEOLOC,
                                            affiliations=[(chosen_acct.jid, "member")], timeout=10)
    await share(owner, 52.5170, 13.3790, **live)

    note = await chosen.wait_message(
        lambda m: is_event(m, NS_GEOLOC, owner_acct.jid) and event_item_ids(m), what="location update")
    assert note["type"] == "headline"
    assert event_item_ids(note) == ["current"]
    assert lat_of(note) == "52.517"
    got = result_items(await pubsub(chosen).get_items(owner_acct.jid, NS_GEOLOC, timeout=10))
    assert [i.get("id") for i in got] == ["current"]

    # The contact who was not chosen gets nothing and may not fetch it.
    assert await nothing_matching(other, lambda m: is_event(m, NS_GEOLOC), seconds=0.5)
    with pytest.raises(IqError) as e:
        await pubsub(other).get_items(owner_acct.jid, NS_GEOLOC, timeout=10)
    assert pubsub_error(e.value) == ("not-allowed", "closed-node")

    # The end time passes: the server retracts the location, the viewer is told
    # (notify_retract), and nobody can fetch it any more.
    retract = await chosen.wait_message(
        lambda m: is_event(m, NS_GEOLOC, owner_acct.jid) and event_retract_ids(m),
        timeout=15, what="retract at the end time")
    assert event_retract_ids(retract) == ["current"]
    for c in (chosen, owner):
        assert result_items(await pubsub(c).get_items(owner_acct.jid, NS_GEOLOC, timeout=10)) == []
    assert not other.matching(lambda m: is_event(m, NS_GEOLOC))

    # The node and its configuration stay for the next share.
    cfg = await pubsub(owner).get_node_config(owner_acct.jid, NS_GEOLOC, timeout=10)
    fields = cfg["pubsub_owner"]["configure"]["form"].get_values()
    assert fields["pubsub#access_model"] == "whitelist"
    assert str(fields["pubsub#item_expire"]) == "4"


async def test_a_whitelisted_stranger_subscribes_explicitly(xmpp):
    owner_acct, viewer_acct = await xmpp.account("geosubo"), await xmpp.account("geosubv")
    owner = await xmpp.connect(owner_acct, plugins=GEO_PLUGINS)
    # No roster relation and no +notify caps: only an explicit subscription.
    viewer = await xmpp.connect(viewer_acct, plugins=GEO_PLUGINS)

    info = await owner.plugin["xep_0030"].get_info(jid=owner_acct.jid, cached=False, timeout=10)
    features = set(info["disco_info"]["features"])
    for f in ("subscribe", "retrieve-subscriptions"):
        assert f"http://jabber.org/protocol/pubsub#{f}" in features, f

    await share(owner, 48.8584, 2.2945, access_model="whitelist")
    # Not whitelisted yet: XEP-0060 §6.1.3.4 closed-node.
    with pytest.raises(IqError) as e:
        await pubsub(viewer).subscribe(owner_acct.jid, NS_GEOLOC, timeout=10)
    assert pubsub_error(e.value) == ("not-allowed", "closed-node")
    # Someone else's JID: §6.1.3.1 invalid-jid.
    with pytest.raises(IqError) as e:
        await pubsub(viewer).subscribe(owner_acct.jid, NS_GEOLOC, subscribee=owner_acct.jid, timeout=10)
    assert pubsub_error(e.value) == ("bad-request", "invalid-jid")
    # No such node.
    with pytest.raises(IqError) as e:
        await pubsub(viewer).subscribe(owner_acct.jid, "urn:example:none", timeout=10)
    assert pubsub_error(e.value)[0] == "item-not-found"

    await pubsub(owner).modify_affiliations(owner_acct.jid, NS_GEOLOC,
                                            affiliations=[(viewer_acct.jid, "member")], timeout=10)
    result = await pubsub(viewer).subscribe(owner_acct.jid, NS_GEOLOC, timeout=10)
    sub = result["pubsub"]["subscription"]
    assert sub["subscription"] == "subscribed" and sub["node"] == NS_GEOLOC
    assert sub["jid"].bare == viewer_acct.jid and sub["subid"]
    # The last item follows the subscription (§6.1.7).
    last = await viewer.wait_message(lambda m: is_event(m, NS_GEOLOC, owner_acct.jid), what="last item")
    assert lat_of(last) == "48.8584"

    subs = await pubsub(viewer).get_subscriptions(owner_acct.jid, timeout=10)
    listed = [(s["node"], s["subscription"]) for s in subs["pubsub"]["subscriptions"]]
    assert listed == [(NS_GEOLOC, "subscribed")]

    await share(owner, 48.8600, 2.2950, access_model="whitelist")
    update = await viewer.wait_message(
        lambda m: is_event(m, NS_GEOLOC) and lat_of(m) == "48.86", what="update to a subscriber")
    assert event_item_ids(update) == ["current"]

    await pubsub(viewer).unsubscribe(owner_acct.jid, NS_GEOLOC, timeout=10)
    subs = await pubsub(viewer).get_subscriptions(owner_acct.jid, timeout=10)
    assert list(subs["pubsub"]["subscriptions"]) == []
    await share(owner, 48.8610, 2.2960, access_model="whitelist")
    assert await nothing_matching(viewer, lambda m: is_event(m, NS_GEOLOC) and lat_of(m) == "48.861")
    # §6.2.3.2: not subscribed.
    with pytest.raises(IqError) as e:
        await pubsub(viewer).unsubscribe(owner_acct.jid, NS_GEOLOC, timeout=10)
    assert pubsub_error(e.value) == ("unexpected-request", "not-subscribed")


async def test_removing_a_viewer_from_the_whitelist_stops_the_updates(xmpp):
    owner_acct, viewer_acct = await xmpp.account("georevo"), await xmpp.account("georevv")
    owner = await xmpp.connect(owner_acct, plugins=GEO_PLUGINS)
    viewer = await xmpp.connect(viewer_acct, plugins=GEO_PLUGINS)
    await share(owner, 1.0, 2.0, access_model="whitelist")
    await pubsub(owner).modify_affiliations(owner_acct.jid, NS_GEOLOC,
                                            affiliations=[(viewer_acct.jid, "member")], timeout=10)
    await pubsub(viewer).subscribe(owner_acct.jid, NS_GEOLOC, timeout=10)
    await viewer.wait_message(lambda m: is_event(m, NS_GEOLOC), what="last item")

    await pubsub(owner).modify_affiliations(owner_acct.jid, NS_GEOLOC,
                                            affiliations=[(viewer_acct.jid, "none")], timeout=10)
    await share(owner, 3.0, 4.0, access_model="whitelist")
    assert await nothing_matching(viewer, lambda m: is_event(m, NS_GEOLOC) and lat_of(m) == "3.0")
    with pytest.raises(IqError) as e:
        await pubsub(viewer).get_items(owner_acct.jid, NS_GEOLOC, timeout=10)
    assert pubsub_error(e.value) == ("not-allowed", "closed-node")
