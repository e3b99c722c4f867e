"""XEP-0030 service discovery on the server, plus XEP-0199 ping, XEP-0202 time, XEP-0092 version."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from slixmpp.exceptions import IqError

from kithtest.xmpp import iq_error_condition

REQUIRED_FEATURES = [
    "http://jabber.org/protocol/disco#info",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "jabber:iq:last",
    "vcard-temp",
    "urn:xmpp:blocking",
    "jabber:iq:private",
    "jabber:iq:register",
]


@pytest.fixture
async def client(xmpp):
    acct = await xmpp.account("disco")
    return await xmpp.connect(acct)


async def test_server_disco_info(client):
    iq = await client.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
    info = iq["disco_info"]
    assert iq["from"].full == "localhost"
    features = set(info["features"])
    missing = [f for f in REQUIRED_FEATURES if f not in features]
    assert not missing, f"features not advertised: {missing} (advertised: {sorted(features)})"
    identities = {(cat, typ) for cat, typ, _lang, _name in info["identities"]}
    assert ("server", "im") in identities, f"identities: {identities}"


async def test_server_disco_items(client):
    iq = await client.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
    assert iq["type"] == "result"
    for jid, _node, _name in iq["disco_items"]["items"]:
        assert jid, "disco item without a JID"


async def test_disco_info_unknown_node(client):
    with pytest.raises(IqError) as info:
        await client.plugin["xep_0030"].get_info(jid="localhost", node="no-such-node-xyz", timeout=10)
    assert iq_error_condition(info.value) == "item-not-found"


async def test_ping_server(client):
    rtt = await client.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    assert rtt >= 0


async def test_entity_time(client):
    iq = await client.plugin["xep_0202"].get_entity_time("localhost", timeout=10)
    # Read the raw XML: slixmpp 1.17's entity_time['utc'] appends a second 'Z'
    # to a correct XEP-0082 value and then fails to parse it.
    utc_text = iq.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}utc")
    tzo = iq.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo")
    assert utc_text and utc_text.endswith("Z"), f"<utc/> must be UTC with a 'Z' (XEP-0082): {utc_text!r}"
    utc = dt.datetime.fromisoformat(utc_text[:-1] + "+00:00")
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((utc - now).total_seconds()) < 60, f"server time {utc} vs local {now}"
    assert tzo and (tzo == "Z" or re.fullmatch(r"[+-]\d\d:\d\d", tzo)), f"bad <tzo/> {tzo!r}"


async def test_software_version(client):
    iq = await client.plugin["xep_0092"].get_version("localhost", timeout=10)
    name = iq["software_version"]["name"]
    version = iq["software_version"]["version"]
    assert name and name.strip(), "empty software name"
    assert version and version.strip(), "empty software version"
