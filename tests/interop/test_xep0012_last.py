"""XEP-0012: Last Activity ("last seen")."""

from __future__ import annotations

import asyncio
import time

from slixmpp.exceptions import IqError

from kithtest.xmpp import iq_error_condition, make_friends


async def test_last_seen_of_offline_contact(xmpp):
    me, contact = await xmpp.account("seer"), await xmpp.account("seen")
    a = await xmpp.connect(me)
    b = await xmpp.connect(contact)
    await make_friends(a, b)
    b.send_presence(ptype="unavailable", pstatus="gone fishing 🎣")
    await b.close()
    await a.wait_presence(lambda p: p["from"].bare == contact.jid and p["type"] == "unavailable")
    logged_out = time.monotonic()
    await asyncio.sleep(3.2)
    iq = await a.plugin["xep_0012"].get_last_activity(contact.jid, timeout=10)
    elapsed = time.monotonic() - logged_out
    seconds = int(iq["last_activity"]["seconds"])
    assert 2 <= seconds <= elapsed + 2, f"last activity {seconds}s, expected about {elapsed:.1f}s"


async def test_last_activity_forbidden_without_subscription(xmpp):
    me, other = await xmpp.account("nosy"), await xmpp.account("hidden")
    a = await xmpp.connect(me)
    o = await xmpp.connect(other)
    await o.close()
    try:
        await a.plugin["xep_0012"].get_last_activity(other.jid, timeout=10)
        raise AssertionError("last activity of a non-contact was disclosed")
    except IqError as e:
        assert iq_error_condition(e) == "forbidden", e


async def test_last_activity_of_user_that_never_logged_in_is_not_leaked(xmpp):
    me, other = await xmpp.account("nosy2"), await xmpp.account("never")
    a = await xmpp.connect(me)
    try:
        await a.plugin["xep_0012"].get_last_activity(other.jid, timeout=10)
        raise AssertionError("last activity of a non-contact was disclosed")
    except IqError as e:
        assert iq_error_condition(e) in ("forbidden", "service-unavailable", "item-not-found"), e


async def test_last_activity_of_online_contact_is_zero(xmpp):
    """XEP-0012 §3: a contact with an available resource -> seconds='0' (SHOULD)."""
    me, contact = await xmpp.account("seer2"), await xmpp.account("online")
    a = await xmpp.connect(me)
    b = await xmpp.connect(contact)
    await make_friends(a, b)
    await asyncio.sleep(1.5)
    iq = await a.plugin["xep_0012"].get_last_activity(contact.jid, timeout=10)
    assert int(iq["last_activity"]["seconds"]) == 0


async def test_server_uptime(xmpp):
    me = await xmpp.account("uptime")
    a = await xmpp.connect(me)
    iq = await a.plugin["xep_0012"].get_last_activity("localhost", timeout=10)
    assert int(iq["last_activity"]["seconds"]) >= 0
