"""Privacy settings, the profile over HTTP and account deletion (issue 4 part C).

Two phone accounts discover each other, set their profile over the HTTP API,
and see each other's profile over XMPP (slixmpp's vCard and PEP plugins) and
HTTP as their privacy settings allow; last seen (XEP-0012) and read markers
(XEP-0333) follow the settings; deleting the account over the API ends the live
session and a re-registration starts clean. HTTP calls use urllib.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio
from slixmpp.exceptions import IqError

from kithtest.api import Api, SmsGateway, sign_up, us_number
from kithtest.pep import PEP_PLUGINS, nothing_matching, photo_hash
from kithtest.xmpp import DEFAULT_PLUGINS, LoginFailed, iq_error_condition, server_roster

SECRET = "privacy-sms-secret"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_HASH = hashlib.sha1(PNG).hexdigest()


@pytest.fixture(scope="module")
def gateway():
    gw = SmsGateway(SECRET)
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def phone_server(backend, server_factory, gateway):
    srv = server_factory.start("privacy", backend, {
        "sms": {"sender": "webhook", "webhook_url": gateway.url + "/sms", "webhook_secret": SECRET},
        "phone": {"codes_per_ip_per_hour": 1000, "codes_per_number_per_hour": 10},
    })
    yield srv
    server_factory.stop(srv)


@pytest.fixture
def api(phone_server):
    return Api(phone_server)


@pytest_asyncio.fixture
async def clients(phone_server):
    from kithtest.xmpp import ClientPool
    pool = ClientPool(phone_server)
    yield pool
    await pool.close_all()


async def friends(api, gateway):
    """Two phone accounts that discovered each other (mutual contacts)."""
    a = await sign_up(api, gateway, us_number())
    b = await sign_up(api, gateway, us_number())
    a_phone = (await api.call("GET", "/profile", token=a["credential"])).body["jid"].split("@")[0]
    b_phone = b["jid"].split("@")[0]
    assert (await api.call("POST", "/contacts/discover", {"phones": ["+" + b_phone]},
                           token=a["credential"])).status == 200
    assert (await api.call("POST", "/contacts/discover", {"phones": ["+" + a_phone]},
                           token=b["credential"])).status == 200
    return a, b


async def test_profile_seen_per_privacy_settings(api, gateway, clients):
    a, b = await friends(api, gateway)
    stranger = await sign_up(api, gateway, us_number())
    r = await api.call("PUT", "/profile", {"name": "Alice", "about": "Hey there"}, token=a["credential"])
    assert r.status == 200, r
    assert r.body["name"] == "Alice" and r.body["about"] == "Hey there"
    r = await api.call("PUT", "/profile/avatar", raw=PNG, token=a["credential"], content_type="image/png")
    assert r.status == 200, r
    assert r.body["avatar"]["hash"] == PNG_HASH

    # Everyone (the default): contact and stranger see it all, over HTTP and XMPP.
    for viewer in (b, stranger):
        seen = await api.call("GET", f"/users/{a['jid']}/profile", token=viewer["credential"])
        assert seen.status == 200, seen
        assert (seen.body["name"], seen.body["about"]) == ("Alice", "Hey there")
        assert seen.body["avatar"]["hash"] == PNG_HASH
        image = await api.call("GET", f"/users/{a['jid']}/avatar", token=viewer["credential"])
        assert image.status == 200 and image.raw == PNG
    cb = await clients.connect(b["jid"], b["credential"], plugins=PEP_PLUGINS + ("xep_0054",))
    vcard = await cb.plugin["xep_0054"].get_vcard(a["jid"], cached=False, timeout=10)
    assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == PNG

    # Contacts only: the contact still sees photo and about, the stranger doesn't.
    r = await api.call("PUT", "/privacy", {"profile_photo": "contacts", "about": "contacts"},
                       token=a["credential"])
    assert r.status == 200 and r.body["profile_photo"] == "contacts", r
    seen = await api.call("GET", f"/users/{a['jid']}/profile", token=b["credential"])
    assert seen.body["avatar"]["hash"] == PNG_HASH and seen.body["about"] == "Hey there"
    seen = await api.call("GET", f"/users/{a['jid']}/profile", token=stranger["credential"])
    assert seen.body["name"] == "Alice"
    assert seen.body["avatar"] is None and seen.body["about"] is None
    image = await api.call("GET", f"/users/{a['jid']}/avatar", token=stranger["credential"])
    assert image.status == 404 and image.error == "no_avatar"
    # The contact gets the XEP-0153 photo hash in presence (XEP-0398: the avatar
    # is the vCard photo too).
    await clients.connect(a["jid"], a["credential"])
    await cb.wait_presence(lambda p: p["from"].bare == a["jid"] and photo_hash(p) == PNG_HASH,
                           what="presence with the photo hash")

    # Nobody: the contact loses the photo over XMPP too (vCard PHOTO, PEP avatar).
    r = await api.call("PUT", "/privacy", {"profile_photo": "nobody"}, token=a["credential"])
    assert r.status == 200
    vcard = await cb.plugin["xep_0054"].get_vcard(a["jid"], cached=False, timeout=10)
    assert not vcard["vcard_temp"]["PHOTO"]["BINVAL"]
    with pytest.raises(IqError) as denied:
        await cb.plugin["xep_0060"].get_items(a["jid"], "urn:xmpp:avatar:metadata", timeout=10)
    assert iq_error_condition(denied.value) == "forbidden"
    # Presence goes out again without the hash, which would tell every contact
    # when the hidden photo changes.
    await cb.wait_presence(lambda p: p["from"].bare == a["jid"] and p["type"] == "available"
                           and photo_hash(p) is None, what="presence without the photo hash")
    # The owner always sees their own.
    own = await api.call("GET", "/profile", token=a["credential"])
    assert own.body["avatar"]["hash"] == PNG_HASH


async def test_last_seen_follows_the_setting(api, gateway, clients):
    a, b = await friends(api, gateway)
    ca = await clients.connect(a["jid"], a["credential"])
    await ca.close()
    cb = await clients.connect(b["jid"], b["credential"])
    last = await cb.plugin["xep_0012"].get_last_activity(a["jid"], timeout=10)
    assert last["type"] == "result"
    assert (await api.call("PUT", "/privacy", {"last_seen": "nobody"}, token=a["credential"])).status == 200
    with pytest.raises(IqError) as denied:
        await cb.plugin["xep_0012"].get_last_activity(a["jid"], timeout=10)
    assert iq_error_condition(denied.value) == "forbidden"


async def test_read_receipts_off_stops_displayed_markers(api, gateway, clients):
    a, b = await friends(api, gateway)
    ca = await clients.connect(a["jid"], a["credential"])
    cb = await clients.connect(b["jid"], b["credential"])

    def marker(sender, to, mid):
        m = sender.make_message(mto=to, mtype="chat")
        m.xml.append(ET.Element("{urn:xmpp:chat-markers:0}displayed", {"id": mid}))
        m.send()

    def is_marker(mid):
        def matches(m):
            found = m.xml.find("{urn:xmpp:chat-markers:0}displayed")
            return found is not None and found.get("id") == mid
        return matches

    marker(cb, a["jid"], "m1")
    await ca.wait_message(is_marker("m1"), what="read marker with receipts on")
    assert (await api.call("PUT", "/privacy", {"read_receipts": False}, token=b["credential"])).status == 200
    marker(cb, a["jid"], "m2")
    # A later chat message arrives; the marker sent before it never does.
    cb.send_message(mto=a["jid"], mbody="after", mtype="chat")
    await ca.wait_message(lambda m: m["body"] == "after", what="message after the marker")
    assert await nothing_matching(ca, is_marker("m2"), 0.5)
    # Like WhatsApp, who turned read receipts off doesn't get others' either.
    marker(ca, b["jid"], "m3")
    assert await nothing_matching(cb, is_marker("m3"), 1.0)


async def test_blocked_user_sees_no_profile(api, gateway, clients):
    a, b = await friends(api, gateway)
    await api.call("PUT", "/profile", {"name": "Alice", "about": "Hi"}, token=a["credential"])
    ca = await clients.connect(a["jid"], a["credential"], plugins=DEFAULT_PLUGINS + ("xep_0191",))
    await ca.plugin["xep_0191"].block(b["jid"], timeout=10)
    seen = await api.call("GET", f"/users/{a['jid']}/profile", token=b["credential"])
    assert seen.status == 404 and seen.error == "user_not_found"


async def test_account_deletion_ends_sessions_and_starts_clean(api, gateway, clients):
    a, b = await friends(api, gateway)
    phone = "+" + a["jid"].split("@")[0]
    ca = await clients.connect(a["jid"], a["credential"])
    assert b["jid"] in await server_roster(ca)
    wrong = await api.call("DELETE", "/account", {"confirm": us_number()}, token=a["credential"])
    assert wrong.status == 400 and wrong.error == "confirmation_mismatch"
    r = await api.call("DELETE", "/account", {"confirm": phone}, token=a["credential"])
    assert r.status == 204, r
    await ca.wait_closed()
    assert (await api.call("GET", "/profile", token=a["credential"])).status == 401
    again = await sign_up(api, gateway, phone)
    assert again["new_account"] is True
    c2 = await clients.connect(again["jid"], again["credential"])
    assert await server_roster(c2) == {}
    with pytest.raises(LoginFailed):
        await clients.connect(a["jid"], a["credential"], mech="SCRAM-SHA-256")


async def test_bad_input_gets_json_errors(api, gateway):
    a = await sign_up(api, gateway, us_number())
    token = a["credential"]
    r = await api.call("PUT", "/privacy", raw=b"{not json", token=token)
    assert r.status == 400 and r.error == "invalid_json"
    r = await api.call("PUT", "/privacy", {"last_seen": "friends"}, token=token)
    assert r.status == 400 and r.error == "invalid_value"
    r = await api.call("PUT", "/privacy", {"read_receipts": "yes"}, token=token)
    assert r.status == 400 and r.error == "invalid_value"
    r = await api.call("PUT", "/profile", {"name": "x" * 500}, token=token)
    assert r.status == 400 and r.error == "invalid_value"
    r = await api.call("PUT", "/profile/avatar", raw=b"not a png", token=token, content_type="image/png")
    assert r.status == 400 and r.error == "invalid_image"
    r = await api.call("PUT", "/profile/avatar", raw=PNG, token=token, content_type="text/plain")
    assert r.status == 415
    r = await api.call("GET", "/privacy")
    assert r.status == 401
    # Nothing changed.
    r = await api.call("GET", "/privacy", token=token)
    assert r.body == {"last_seen": "everyone", "profile_photo": "everyone", "about": "everyone",
                      "read_receipts": True}
