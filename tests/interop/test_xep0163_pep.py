"""XEP-0163 Personal Eventing Protocol on every account (the XEP-0060 subset PEP
needs), XEP-0223 publish-options, XEP-0115 caps-filtered notifications, and the
OMEMO (XEP-0384) key publishing that end-to-end encryption depends on.

Driven by slixmpp's own xep_0060/xep_0163/xep_0115/xep_0223 plugins."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp.exceptions import IqError

from kithtest.pep import (
    NS_DELAY,
    NS_PUBSUB_OWNER,
    PEP_PLUGINS,
    config_values,
    connect_pep,
    event_item_ids,
    event_retract_ids,
    is_event,
    nothing_matching,
    payload,
    pubsub_error,
    publish_options,
    result_items,
)
from kithtest.xmpp import ClientPool, make_friends

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_MOOD = "http://jabber.org/protocol/mood"
NS_TUNE = "http://jabber.org/protocol/tune"
# OMEMO 0.3 (Conversations, Dino, Gajim) and OMEMO 2 (XEP-0384 current).
NS_AXOLOTL = "eu.siacs.conversations.axolotl"
NODE_DEVICELIST = f"{NS_AXOLOTL}.devicelist"
NS_OMEMO2 = "urn:xmpp:omemo:2"


def pubsub(c):
    return c.plugin["xep_0060"]


def mood(text: str):
    return payload(NS_MOOD, "mood", text)


async def test_account_is_a_pep_service(xmpp):
    me = await xmpp.account("pepdisco")
    a = await xmpp.connect(me, plugins=PEP_PLUGINS)
    info = await a.plugin["xep_0030"].get_info(jid=me.jid, cached=False, timeout=10)
    identities = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
    assert ("account", "registered") in identities
    assert ("pubsub", "pep") in identities
    features = set(info["disco_info"]["features"])
    for f in ("publish", "publish-options", "access-open", "access-presence", "access-whitelist",
              "auto-create", "filtered-notifications", "last-published", "persistent-items",
              "retract-items", "retrieve-items", "delete-nodes", "purge-nodes", "config-node"):
        assert f"http://jabber.org/protocol/pubsub#{f}" in features, f

    # disco#items lists the nodes (none yet, then the one published).
    items = await a.plugin["xep_0030"].get_items(jid=me.jid, timeout=10)
    assert not items["disco_items"]["items"]
    await pubsub(a).publish(me.jid, NS_MOOD, id="current", payload=mood("happy"), timeout=10)
    items = await a.plugin["xep_0030"].get_items(jid=me.jid, timeout=10)
    assert [(str(i[0]), i[1]) for i in items["disco_items"]["items"]] == [(me.jid, NS_MOOD)]


async def test_publish_retrieve_retract_purge_delete(xmpp):
    me = await xmpp.account("pepcrud")
    a = await xmpp.connect(me, plugins=PEP_PLUGINS)
    ps = pubsub(a)
    # max_items 10 so several items stay (a PEP node keeps one by default).
    opts = publish_options(max_items="10")
    r1 = await ps.publish(me.jid, NS_TUNE, id="t1", payload=payload(NS_TUNE, "tune"), options=opts, timeout=10)
    assert r1["pubsub"]["publish"]["item"]["id"] == "t1"
    # No id: the server generates one and says which.
    r2 = await ps.publish(me.jid, NS_TUNE, payload=payload(NS_TUNE, "tune"), options=opts, timeout=10)
    generated = r2["pubsub"]["publish"]["item"]["id"]
    assert generated and generated != "t1"
    await ps.publish(me.jid, NS_TUNE, id="t3", payload=payload(NS_TUNE, "tune"), options=opts, timeout=10)

    everything = await ps.get_items(me.jid, NS_TUNE, timeout=10)
    assert sorted(i.get("id") for i in result_items(everything)) == sorted(["t1", generated, "t3"])
    newest = await ps.get_items(me.jid, NS_TUNE, max_items=1, timeout=10)
    assert [i.get("id") for i in result_items(newest)] == ["t3"]
    one = await ps.get_item(me.jid, NS_TUNE, "t1", timeout=10)
    got = result_items(one)
    assert [i.get("id") for i in got] == ["t1"]
    assert got[0].find(f"{{{NS_TUNE}}}tune") is not None, "the payload comes back"

    await ps.retract(me.jid, NS_TUNE, "t1", timeout=10)
    with pytest.raises(IqError) as e:
        await ps.get_item(me.jid, NS_TUNE, "t1", timeout=10)
    assert pubsub_error(e.value)[0] == "item-not-found"
    with pytest.raises(IqError) as e:
        await ps.retract(me.jid, NS_TUNE, "t1", timeout=10)
    assert pubsub_error(e.value)[0] == "item-not-found"

    await ps.purge(me.jid, NS_TUNE, timeout=10)
    assert result_items(await ps.get_items(me.jid, NS_TUNE, timeout=10)) == []

    await ps.delete_node(me.jid, NS_TUNE, timeout=10)
    with pytest.raises(IqError) as e:
        await ps.get_items(me.jid, NS_TUNE, timeout=10)
    assert pubsub_error(e.value)[0] == "item-not-found"


async def test_items_survive_reconnect_and_default_keeps_one(xmpp):
    me = await xmpp.account("peppersist")
    a = await xmpp.connect(me, plugins=PEP_PLUGINS)
    for text in ("sad", "happy"):
        await pubsub(a).publish(me.jid, NS_MOOD, payload=mood(text), timeout=10)
    await a.close()
    a2 = await xmpp.connect(me, plugins=PEP_PLUGINS)
    items = result_items(await pubsub(a2).get_items(me.jid, NS_MOOD, timeout=10))
    assert [i.find(f"{{{NS_MOOD}}}mood").text for i in items] == ["happy"]


async def test_access_models_on_retrieval(xmpp):
    owner_acct, friend_acct, stranger_acct = (
        await xmpp.account("pepown"), await xmpp.account("pepfriend"), await xmpp.account("pepstranger"))
    owner = await xmpp.connect(owner_acct, plugins=PEP_PLUGINS)
    friend = await xmpp.connect(friend_acct, plugins=PEP_PLUGINS)
    stranger = await xmpp.connect(stranger_acct, plugins=PEP_PLUGINS)
    await make_friends(owner, friend)
    ps = pubsub(owner)
    # presence (the default), open and whitelist nodes
    await ps.publish(owner_acct.jid, NS_MOOD, payload=mood("calm"), timeout=10)
    await ps.publish(owner_acct.jid, "urn:example:open", payload=payload("urn:example", "x"),
                     options=publish_options(access_model="open"), timeout=10)
    await ps.publish(owner_acct.jid, "urn:example:secret", payload=payload("urn:example", "x"),
                     options=publish_options(access_model="whitelist"), timeout=10)

    # presence: the contact reads, the stranger may not
    assert len(result_items(await pubsub(friend).get_items(owner_acct.jid, NS_MOOD, timeout=10))) == 1
    with pytest.raises(IqError) as e:
        await pubsub(stranger).get_items(owner_acct.jid, NS_MOOD, timeout=10)
    assert pubsub_error(e.value) == ("not-authorized", "presence-subscription-required")

    # open: anyone
    for c in (friend, stranger):
        assert len(result_items(await pubsub(c).get_items(owner_acct.jid, "urn:example:open", timeout=10))) == 1

    # whitelist: only the owner, until the contact is made a member
    assert len(result_items(await ps.get_items(owner_acct.jid, "urn:example:secret", timeout=10))) == 1
    for c in (friend, stranger):
        with pytest.raises(IqError) as e:
            await pubsub(c).get_items(owner_acct.jid, "urn:example:secret", timeout=10)
        assert pubsub_error(e.value) == ("not-allowed", "closed-node")
    await ps.modify_affiliations(owner_acct.jid, "urn:example:secret",
                                 affiliations=[(friend_acct.jid, "member")], timeout=10)
    affs = await ps.get_node_affiliations(owner_acct.jid, "urn:example:secret", timeout=10)
    listed = {a["jid"].bare: a["affiliation"] for a in affs["pubsub_owner"]["affiliations"]}
    assert listed == {owner_acct.jid: "owner", friend_acct.jid: "member"}
    assert len(result_items(await pubsub(friend).get_items(owner_acct.jid, "urn:example:secret", timeout=10))) == 1
    with pytest.raises(IqError):
        await pubsub(stranger).get_items(owner_acct.jid, "urn:example:secret", timeout=10)

    # disco#items shows each requester only what it may read
    seen = await stranger.plugin["xep_0030"].get_items(jid=owner_acct.jid, timeout=10)
    assert [i[1] for i in seen["disco_items"]["items"]] == ["urn:example:open"]  # one item

    # nobody but the owner publishes or manages the owner's nodes
    with pytest.raises(IqError) as e:
        await pubsub(friend).publish(owner_acct.jid, NS_MOOD, payload=mood("hijacked"), timeout=10)
    assert pubsub_error(e.value)[0] == "forbidden"
    with pytest.raises(IqError) as e:
        await pubsub(friend).delete_node(owner_acct.jid, NS_MOOD, timeout=10)
    assert pubsub_error(e.value)[0] == "forbidden"


async def test_publish_options_are_preconditions(xmpp):
    me = await xmpp.account("peppo")
    a = await xmpp.connect(me, plugins=PEP_PLUGINS)
    ps = pubsub(a)
    node = "urn:example:po"
    # A new node is created with the options ...
    await ps.publish(me.jid, node, payload=payload("urn:example", "x"),
                     options=publish_options(access_model="open", max_items="max"), timeout=10)
    conf = await ps.get_node_config(me.jid, node, timeout=10)
    form = conf.xml.find(f"{{{NS_PUBSUB_OWNER}}}pubsub/{{{NS_PUBSUB_OWNER}}}configure/{{jabber:x:data}}x")
    values = config_values(form)
    assert values["pubsub#access_model"] == ["open"]
    assert values["pubsub#max_items"] == ["max"]
    # ... the same options match ...
    await ps.publish(me.jid, node, payload=payload("urn:example", "x"),
                     options=publish_options(access_model="open"), timeout=10)
    # ... and different ones do not, leaving the node as it was.
    with pytest.raises(IqError) as e:
        await ps.publish(me.jid, node, payload=payload("urn:example", "x"),
                         options=publish_options(access_model="whitelist"), timeout=10)
    assert pubsub_error(e.value) == ("conflict", "precondition-not-met")
    assert len(result_items(await ps.get_items(me.jid, node, timeout=10))) == 2

    # After the owner reconfigures the node, those options match.
    cfg = a.plugin["xep_0004"].make_form(ftype="submit")
    cfg.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    cfg.add_field(var="pubsub#access_model", value="whitelist")
    await ps.set_node_config(me.jid, node, cfg, timeout=10)
    await ps.publish(me.jid, node, payload=payload("urn:example", "x"),
                     options=publish_options(access_model="whitelist"), timeout=10)

    # An access model kith does not offer is refused.
    with pytest.raises(IqError) as e:
        await ps.publish(me.jid, "urn:example:authorize", payload=payload("urn:example", "x"),
                         options=publish_options(access_model="authorize"), timeout=10)
    assert pubsub_error(e.value) == ("not-acceptable", "unsupported-access-model")


async def test_omemo_keys_published_and_fetched_by_a_stranger(xmpp):
    """What an OMEMO client does: publish its device list and bundle with
    access_model=open, then a peer (not even a contact) fetches them to start an
    encrypted session."""
    alice_acct, bob_acct = await xmpp.account("omemoa"), await xmpp.account("omemob")
    alice = await xmpp.connect(alice_acct, plugins=PEP_PLUGINS)
    bob = await xmpp.connect(bob_acct, plugins=PEP_PLUGINS)
    ps = pubsub(alice)
    device_id = "1234567"
    devicelist = payload(NS_AXOLOTL, "list")
    devicelist.append(payload(NS_AXOLOTL, "device", id=device_id))
    await ps.publish(alice_acct.jid, NODE_DEVICELIST, id="current", payload=devicelist,
                     options=publish_options(access_model="open"), timeout=10)
    bundle = payload(NS_AXOLOTL, "bundle")
    spk = payload(NS_AXOLOTL, "signedPreKeyPublic", "BQ==", signedPreKeyId="1")
    bundle.append(spk)
    bundle.append(payload(NS_AXOLOTL, "signedPreKeySignature", "c2ln"))
    bundle.append(payload(NS_AXOLOTL, "identityKey", "aWs="))
    prekeys = payload(NS_AXOLOTL, "prekeys")
    for n in range(1, 4):
        prekeys.append(payload(NS_AXOLOTL, "preKeyPublic", "cGs=", preKeyId=str(n)))
    bundle.append(prekeys)
    bundle_node = f"{NS_AXOLOTL}.bundles:{device_id}"
    await ps.publish(alice_acct.jid, bundle_node, id="current", payload=bundle,
                     options=publish_options(access_model="open"), timeout=10)
    # OMEMO 2: one bundles node, an item per device, max_items=max.
    await ps.publish(alice_acct.jid, f"{NS_OMEMO2}:bundles", id=device_id,
                     payload=payload(NS_OMEMO2, "bundle"),
                     options=publish_options(access_model="open", max_items="max"), timeout=10)

    got = result_items(await pubsub(bob).get_items(alice_acct.jid, NODE_DEVICELIST, timeout=10))
    devices = [d.get("id") for d in got[0].iter(f"{{{NS_AXOLOTL}}}device")]
    assert devices == [device_id]
    got = result_items(await pubsub(bob).get_items(alice_acct.jid, bundle_node, max_items=1, timeout=10))
    fetched = got[0].find(f"{{{NS_AXOLOTL}}}bundle")
    assert fetched.find(f"{{{NS_AXOLOTL}}}identityKey").text == "aWs="
    assert len(fetched.findall(f"{{{NS_AXOLOTL}}}prekeys/{{{NS_AXOLOTL}}}preKeyPublic")) == 3
    got = result_items(await pubsub(bob).get_item(alice_acct.jid, f"{NS_OMEMO2}:bundles", device_id, timeout=10))
    assert [i.get("id") for i in got] == [device_id]

    # Republishing with the same options (every client start) still succeeds.
    await ps.publish(alice_acct.jid, NODE_DEVICELIST, id="current", payload=devicelist,
                     options=publish_options(access_model="open"), timeout=10)


async def test_notifications_follow_caps_plus_notify(xmpp):
    owner_acct, friend_acct = await xmpp.account("pepnotify"), await xmpp.account("pepnfriend")
    owner = await connect_pep(xmpp, owner_acct, [NS_MOOD])
    friend = await xmpp.connect(friend_acct, plugins=PEP_PLUGINS)
    await make_friends(owner, friend)
    await friend.close()
    # Two resources of the friend: one wants mood notifications, one does not.
    wants = await connect_pep(xmpp, friend_acct, [NS_MOOD], label="wants")
    ignores = await connect_pep(xmpp, friend_acct, [NS_TUNE], label="ignores")
    plain = await xmpp.connect(friend_acct, label="nocaps")
    await asyncio.sleep(1.0)  # the server asks each new caps ver once

    await pubsub(owner).publish(owner_acct.jid, NS_MOOD, id="m1", payload=mood("excited"), timeout=10)
    note = await wants.wait_message(lambda m: is_event(m, NS_MOOD, owner_acct.jid), what="mood event")
    assert note["type"] == "headline"
    assert event_item_ids(note) == ["m1"]
    # the owner's own resource announced +notify too
    await owner.wait_message(lambda m: is_event(m, NS_MOOD, owner_acct.jid), what="own mood event")
    for c in (ignores, plain):
        assert await nothing_matching(c, lambda m: is_event(m, NS_MOOD)), c.label

    # A retraction is announced (notify_retract defaults to on).
    await pubsub(owner).retract(owner_acct.jid, NS_MOOD, "m1", timeout=10)
    note = await wants.wait_message(lambda m: is_event(m, NS_MOOD) and event_retract_ids(m), what="retract")
    assert event_retract_ids(note) == ["m1"]


async def test_no_notifications_without_a_subscription(xmpp):
    owner_acct, stranger_acct = await xmpp.account("pepnosub"), await xmpp.account("pepnosubx")
    owner = await connect_pep(xmpp, owner_acct, [NS_MOOD])
    stranger = await connect_pep(xmpp, stranger_acct, [NS_MOOD])
    await asyncio.sleep(0.5)
    await pubsub(owner).publish(owner_acct.jid, NS_MOOD, payload=mood("private"), timeout=10)
    await owner.wait_message(lambda m: is_event(m, NS_MOOD), what="own event")
    assert await nothing_matching(stranger, lambda m: is_event(m, NS_MOOD))


async def test_last_published_item_on_login_and_on_approval(xmpp):
    owner_acct, friend_acct, late_acct = (
        await xmpp.account("peplast"), await xmpp.account("peplastf"), await xmpp.account("peplastl"))
    owner = await xmpp.connect(owner_acct, plugins=PEP_PLUGINS)
    friend = await xmpp.connect(friend_acct, plugins=PEP_PLUGINS)
    await make_friends(owner, friend)
    await friend.close()
    await pubsub(owner).publish(owner_acct.jid, NS_MOOD, id="now", payload=mood("sleepy"), timeout=10)

    # XEP-0163 §4.3.3: the contact logs in with +notify and gets the last item, delayed.
    back = await connect_pep(xmpp, friend_acct, [NS_MOOD])
    note = await back.wait_message(lambda m: is_event(m, NS_MOOD, owner_acct.jid), what="last item")
    assert event_item_ids(note) == ["now"]
    assert note.xml.find(f"{{{NS_DELAY}}}delay") is not None

    # A new subscriber gets it when the owner approves.
    late = await connect_pep(xmpp, late_acct, [NS_MOOD])
    await asyncio.sleep(0.5)
    late.send_presence(pto=owner_acct.jid, ptype="subscribe")
    await owner.wait_presence(lambda p: p["type"] == "subscribe", what="subscribe")
    owner.send_presence(pto=late_acct.jid, ptype="subscribed")
    note = await late.wait_message(lambda m: is_event(m, NS_MOOD, owner_acct.jid), what="item on approval")
    assert event_item_ids(note) == ["now"]


async def test_node_configuration_and_max_items(xmpp):
    me = await xmpp.account("pepconf")
    a = await xmpp.connect(me, plugins=PEP_PLUGINS)
    ps = pubsub(a)
    node = "urn:example:conf"
    form = a.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    form.add_field(var="pubsub#max_items", value="2")
    form.add_field(var="pubsub#access_model", value="open")
    await ps.create_node(me.jid, node, config=form, timeout=10)
    with pytest.raises(IqError) as e:
        await ps.create_node(me.jid, node, timeout=10)
    assert pubsub_error(e.value)[0] == "conflict"
    for n in range(4):
        await ps.publish(me.jid, node, id=f"i{n}", payload=payload("urn:example", "x"), timeout=10)
    assert [i.get("id") for i in result_items(await ps.get_items(me.jid, node, timeout=10))] == ["i3", "i2"]

    default = await ps.get_node_config(me.jid, timeout=10)  # no node: the default form
    dform = default.xml.find(f"{{{NS_PUBSUB_OWNER}}}pubsub/{{{NS_PUBSUB_OWNER}}}default/{{jabber:x:data}}x")
    assert config_values(dform)["pubsub#access_model"] == ["presence"]

    bad = a.plugin["xep_0004"].make_form(ftype="submit")
    bad.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    bad.add_field(var="pubsub#max_items", value="lots")
    with pytest.raises(IqError) as e:
        await ps.set_node_config(me.jid, node, bad, timeout=10)
    assert pubsub_error(e.value)[0] == "not-acceptable"


async def test_bad_requests_get_pubsub_errors(xmpp):
    me = await xmpp.account("pepbad")
    a = await xmpp.connect(me, plugins=PEP_PLUGINS)
    ps = pubsub(a)
    # an item too large (default limit 64 KiB)
    with pytest.raises(IqError) as e:
        await ps.publish(me.jid, NS_MOOD, payload=payload(NS_MOOD, "mood", "x" * 70_000), timeout=10)
    assert pubsub_error(e.value) == ("not-acceptable", "payload-too-big")
    # no payload
    with pytest.raises(IqError) as e:
        await ps.publish(me.jid, NS_MOOD, id="empty", timeout=10)
    assert pubsub_error(e.value) == ("bad-request", "payload-required")
    # unknown node
    with pytest.raises(IqError) as e:
        await ps.get_items(me.jid, "urn:example:none", timeout=10)
    assert pubsub_error(e.value)[0] == "item-not-found"
    # subscribing to a node that does not exist (XEP-0060 §6.1.3.12)
    with pytest.raises(IqError) as e:
        await ps.subscribe(me.jid, NS_MOOD, timeout=10)
    assert pubsub_error(e.value)[0] == "item-not-found"
    # the server's own JID hosts no pubsub service
    with pytest.raises(IqError) as e:
        await ps.get_items("localhost", NS_MOOD, timeout=10)
    assert pubsub_error(e.value)[0] == "service-unavailable"
    # the session still works
    await ps.publish(me.jid, NS_MOOD, payload=mood("fine"), timeout=10)


@pytest.fixture(scope="module")
def small_pep_server(backend, server_factory):
    srv = server_factory.start("pepsmall", backend, {"pep": {"max_nodes_per_user": 3}})
    yield srv
    server_factory.stop(srv)


async def test_node_limit_per_account(small_pep_server):
    pool = ClientPool(small_pep_server)
    try:
        me = await pool.account("peplimit")
        a = await pool.connect(me, plugins=PEP_PLUGINS)
        ps = pubsub(a)
        for n in range(3):
            await ps.publish(me.jid, f"urn:example:n{n}", payload=payload("urn:example", "x"), timeout=10)
        with pytest.raises(IqError) as e:
            await ps.publish(me.jid, "urn:example:n3", payload=payload("urn:example", "x"), timeout=10)
        assert pubsub_error(e.value) == ("not-allowed", "max-nodes-exceeded")
        # existing nodes still take items; deleting one makes room
        await ps.publish(me.jid, "urn:example:n0", payload=payload("urn:example", "x"), timeout=10)
        await ps.delete_node(me.jid, "urn:example:n1", timeout=10)
        await ps.publish(me.jid, "urn:example:n3", payload=payload("urn:example", "x"), timeout=10)
    finally:
        await pool.close_all()


async def test_directed_presence_makes_a_visitor_of_an_open_node(xmpp):
    """XEP-0163 §4 rule 1: a non-contact that shares presence with the owner
    (directed presence, with +notify caps) gets notifications of open nodes only,
    and the last item when it arrives; directed 'unavailable' ends it."""
    owner_acct, visitor_acct = await xmpp.account("pepvisit"), await xmpp.account("pepvisitor")
    owner = await xmpp.connect(owner_acct, plugins=PEP_PLUGINS)
    ps = pubsub(owner)
    devicelist = payload(NS_AXOLOTL, "list")
    devicelist.append(payload(NS_AXOLOTL, "device", id="42"))
    await ps.publish(owner_acct.jid, NODE_DEVICELIST, id="current", payload=devicelist,
                     options=publish_options(access_model="open"), timeout=10)
    visitor = await connect_pep(xmpp, visitor_acct, [NODE_DEVICELIST, NS_MOOD])
    await asyncio.sleep(0.5)  # its caps are known to the server
    visitor.send_presence(pto=owner_acct.jid)
    last = await visitor.wait_message(lambda m: is_event(m, NODE_DEVICELIST, owner_acct.jid),
                                      what="last device list on directed presence")
    assert event_item_ids(last) == ["current"]

    await ps.publish(owner_acct.jid, NODE_DEVICELIST, id="current", payload=devicelist, timeout=10)
    await visitor.wait_message(lambda m: is_event(m, NODE_DEVICELIST, owner_acct.jid), what="device list update")
    await ps.publish(owner_acct.jid, NS_MOOD, payload=mood("secret"), timeout=10)
    assert await nothing_matching(visitor, lambda m: is_event(m, NS_MOOD))

    visitor.send_presence(pto=owner_acct.jid, ptype="unavailable")
    await asyncio.sleep(0.3)
    visitor.forget()
    await ps.publish(owner_acct.jid, NODE_DEVICELIST, id="current", payload=devicelist, timeout=10)
    assert await nothing_matching(visitor, lambda m: is_event(m, NODE_DEVICELIST))


async def test_caps_are_asked_once_per_version(xmpp):
    """XEP-0115 §6.2/§5.4: the server asks one resource for an unknown 'ver' and
    reuses the verified answer for every other resource announcing it."""
    acct = await xmpp.account("pepcaps")

    def caps_queries(c):
        return [iq.xml.find(f"{{{NS_DISCO_INFO}}}query").get("node")
                for iq in c.matching(lambda st: st.xml.tag == "{jabber:client}iq"
                                     and st["type"] == "get" and st["from"].full == "localhost"
                                     and st.xml.find(f"{{{NS_DISCO_INFO}}}query") is not None)]

    # A feature of this test's own makes a 'ver' the server has not seen before.
    interests = [NS_MOOD, f"urn:example:caps:{acct.name}"]
    first = await connect_pep(xmpp, acct, interests, label="first")
    await first.wait_iq(lambda iq: bool(caps_queries(first)), what="the server's caps query")
    await asyncio.sleep(1.0)
    second = await connect_pep(xmpp, acct, interests, label="second")
    await asyncio.sleep(1.5)
    asked = caps_queries(first) + caps_queries(second)
    assert asked and all("#" in node for node in asked), asked
    # The two clients announce the same caps: no 'ver' is asked twice.
    # The second client announces the same caps as the first: it is not asked.
    assert caps_queries(second) == [], asked
    assert len(asked) == len(set(asked)), asked
    # ... and the cached answer serves the second one: it gets the notification.
    await pubsub(second).publish(acct.jid, NS_MOOD, payload=mood("cached"), timeout=10)
    await second.wait_message(lambda m: is_event(m, NS_MOOD, acct.jid), what="event via cached caps")
