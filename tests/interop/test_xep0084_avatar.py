"""The user profile over XMPP: XEP-0172 nickname and XEP-0084 avatar over PEP,
XEP-0153 vCard photo hash in presence, and XEP-0398 conversion between the two
(a PEP avatar shows up in the vCard and vice versa).

Driven by slixmpp's xep_0172, xep_0084, xep_0054 and xep_0153 plugins."""

from __future__ import annotations

import base64
import hashlib

import pytest
from slixmpp.exceptions import IqError

from kithtest.pep import PEP_PLUGINS, connect_pep, event_item_ids, is_event, photo_hash, pubsub_error, result_items
from kithtest.xmpp import make_friends

NS_NICK = "http://jabber.org/protocol/nick"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_META = "urn:xmpp:avatar:metadata"
NS_VCARD = "vcard-temp"

# A real 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_HASH = hashlib.sha1(PNG).hexdigest()


async def friends(xmpp, prefix: str):
    """Two accounts with a mutual subscription; the second one's client wants
    nick and avatar notifications (its caps say so)."""
    a_acct, b_acct = await xmpp.account(f"{prefix}a"), await xmpp.account(f"{prefix}b")
    a = await xmpp.connect(a_acct, plugins=PEP_PLUGINS + ("xep_0153",))
    b = await connect_pep(xmpp, b_acct)
    await make_friends(a, b)
    return a_acct, a, b_acct, b


async def test_nick_is_seen_by_a_contact(xmpp):
    a_acct, a, b_acct, b = await friends(xmpp, "nick")
    await a.plugin["xep_0172"].publish_nick("Zoë 🦊", timeout=10)
    note = await b.wait_message(lambda m: is_event(m, NS_NICK, a_acct.jid), what="nick event")
    assert note["pubsub_event"]["items"]["item"]["payload"].text == "Zoë 🦊"
    got = result_items(await b.plugin["xep_0060"].get_items(a_acct.jid, NS_NICK, timeout=10))
    assert got[0].find(f"{{{NS_NICK}}}nick").text == "Zoë 🦊"


async def test_avatar_publish_notify_fetch_and_vcard(xmpp):
    a_acct, a, b_acct, b = await friends(xmpp, "avatar")
    av = a.plugin["xep_0084"]
    await av.publish_avatar(PNG, timeout=10)
    await av.publish_avatar_metadata([{"id": PNG_HASH, "type": "image/png", "bytes": len(PNG)}], timeout=10)

    note = await b.wait_message(lambda m: is_event(m, NS_AVATAR_META, a_acct.jid), what="avatar metadata event")
    assert event_item_ids(note) == [PNG_HASH]
    data = await b.plugin["xep_0084"].retrieve_avatar(a_acct.jid, PNG_HASH, timeout=10)
    item = result_items(data)[0]
    assert base64.b64decode(item.find(f"{{{NS_AVATAR_DATA}}}data").text) == PNG

    # XEP-0398: the vCard now carries the same photo, and presence its hash.
    vcard = await b.plugin["xep_0054"].get_vcard(a_acct.jid, cached=False, timeout=10)
    assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == PNG
    assert vcard["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
    pres = await b.wait_presence(lambda p: p["from"].bare == a_acct.jid and photo_hash(p) == PNG_HASH,
                                 what="presence with the photo hash")
    assert pres["type"] == "available"


async def test_vcard_photo_hash_in_presence_and_as_pep_avatar(xmpp):
    a_acct, a, b_acct, b = await friends(xmpp, "vcardav")
    # XEP-0153 through slixmpp's own plugin: store the photo in the vCard.
    await a.plugin["xep_0153"].set_avatar(avatar=PNG, mtype="image/png", timeout=10)
    await b.wait_presence(lambda p: p["from"].bare == a_acct.jid and photo_hash(p) == PNG_HASH,
                          what="presence with the vCard photo hash")

    # Another device of the user, whose client knows nothing about avatars:
    # the server puts the hash into its presence too.
    plain = await xmpp.connect(a_acct, label="plain")
    await b.wait_presence(lambda p: p["from"] == plain.boundjid and photo_hash(p) == PNG_HASH,
                          what="server-stamped hash on a plain client's presence")

    # XEP-0398: the same image is now the PEP avatar.
    meta = result_items(await b.plugin["xep_0060"].get_items(a_acct.jid, NS_AVATAR_META, timeout=10))
    info = meta[0].find(f"{{{NS_AVATAR_META}}}metadata/{{{NS_AVATAR_META}}}info")
    assert info.get("id") == PNG_HASH and info.get("type") == "image/png"
    data = await b.plugin["xep_0084"].retrieve_avatar(a_acct.jid, PNG_HASH, timeout=10)
    assert base64.b64decode(result_items(data)[0].find(f"{{{NS_AVATAR_DATA}}}data").text) == PNG


async def test_avatar_is_hidden_from_strangers_and_limited_in_size(xmpp):
    a_acct, a, b_acct, b = await friends(xmpp, "avpriv")
    stranger_acct = await xmpp.account("avstranger")
    stranger = await xmpp.connect(stranger_acct, plugins=PEP_PLUGINS)
    await a.plugin["xep_0084"].publish_avatar(PNG, timeout=10)
    with pytest.raises(IqError) as e:
        await stranger.plugin["xep_0084"].retrieve_avatar(a_acct.jid, PNG_HASH, timeout=10)
    assert pubsub_error(e.value) == ("not-authorized", "presence-subscription-required")
    # pep.max_avatar_bytes defaults to 128 KiB
    with pytest.raises(IqError) as e:
        await a.plugin["xep_0084"].publish_avatar(b"\x89PNG" + b"\0" * 140_000, timeout=10)
    assert pubsub_error(e.value) == ("not-acceptable", "payload-too-big")
