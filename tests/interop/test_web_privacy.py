"""Privacy in the web client (issue 7) in Debian's Chromium: the settings screen
reads and writes kith's privacy settings (`urn:kith:privacy:0`, the one path
that works for password and phone sign-ins alike), the server enforces them
(another client of the account reads them back, a contact is refused the last
activity, read markers stop), they are shown again after a reload; the
conversation header shows a contact's last seen only as their setting allows
(XEP-0012, answered by the server). No console errors, every control labelled.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio
from playwright.async_api import expect
from slixmpp.exceptions import IqError

from kithtest.browser import browser, peers, requires_chromium, tabs  # noqa: F401 (fixtures)
from kithtest.xmpp import DEFAULT_PLUGINS, iq_error_condition, make_friends

on_module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = [
    requires_chromium,
]
NS_PRIVACY = "urn:kith:privacy:0"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_SID = "urn:xmpp:sid:0"


@pytest_asyncio.fixture(loop_scope="module")
async def tab(tabs):  # noqa: F811
    return await tabs()


async def friends(peers, prefix: str):
    alice, bob = await peers.account(prefix + "a"), await peers.account(prefix + "b")
    a = await peers.connect(alice, plugins=DEFAULT_PLUGINS)
    b = await peers.connect(bob, plugins=DEFAULT_PLUGINS)
    await make_friends(a, b)
    await a.close()
    return alice, bob, b


async def privacy_iq(client, kind: str = "get", **attrs) -> ET.Element | None:
    """`<privacy xmlns='urn:kith:privacy:0'/>` on the client's own account."""
    iq = client.Iq()
    iq["type"] = kind
    ET.SubElement(iq.xml, f"{{{NS_PRIVACY}}}privacy", **attrs)
    res = await iq.send(timeout=10)
    return res.xml.find(f"{{{NS_PRIVACY}}}privacy")


@on_module_loop
async def test_privacy_settings_are_saved_enforced_and_shown_after_reload(peers, tab):
    alice, bob, b = await friends(peers, "pv")
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await page.get_by_role("button", name="Profile and settings").click()
    dialog = page.get_by_role("dialog", name="Profile and settings")
    await expect(dialog.get_by_label("Last seen")).to_have_value("everyone")  # WhatsApp's defaults
    await expect(dialog.get_by_label("Read receipts")).to_be_checked()
    await dialog.get_by_label("Last seen").select_option("nobody")
    await expect(dialog.get_by_text("Privacy settings saved.")).to_be_visible()
    await dialog.get_by_label("Profile photo").select_option("contacts")
    await dialog.get_by_label("Read receipts").uncheck()
    await expect(dialog.get_by_text("Privacy settings saved.")).to_be_visible()
    await dialog.get_by_role("heading", name="Privacy").scroll_into_view_if_needed()
    await tab.shot("privacy-settings")
    await dialog.get_by_role("button", name="Close").click()

    # Another client of alice's account reads what the page saved.
    other = await peers.connect(alice, resource="other", plugins=DEFAULT_PLUGINS)
    saved = await privacy_iq(other)
    assert (saved.get("last-seen"), saved.get("profile-photo"), saved.get("about"), saved.get("read-receipts")) \
        == ("nobody", "contacts", "everyone", "false")
    await other.close()

    # The server enforces it: bob, a contact, may not learn alice's last activity ...
    with pytest.raises(IqError) as refused:
        await b.plugin["xep_0012"].get_last_activity(alice.jid, timeout=10)
    assert iq_error_condition(refused.value) == "forbidden"

    # ... and read receipts are off both ways: bob's displayed marker never turns
    # alice's tick blue (it stays ✓✓ delivered), and alice sends bob none.
    await tab.open_chat(bob.name)
    await tab.send("are you there")
    got = await b.wait_message(lambda m: m["body"] == "are you there", what="alice's message")
    origin = got.xml.find(f"{{{NS_SID}}}origin-id").get("id")
    b.send_raw(f"<message to='{alice.jid}' id='r1'><received xmlns='{NS_RECEIPTS}' id='{origin}'/></message>")
    bubble = tab.bubble("are you there")
    await expect(bubble).to_have_attribute("data-state", "delivered")
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='d1'><displayed xmlns='{NS_MARKERS}' id='{origin}'/></message>")
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='b1'><body>yes</body><markable xmlns='{NS_MARKERS}'/></message>")
    await expect(tab.bubble("yes")).to_be_visible()  # the marker was sent before this
    await asyncio.sleep(0.5)
    await expect(bubble).to_have_attribute("data-state", "delivered")
    assert not b.matching(lambda m: getattr(m, "name", "") == "message"
                          and m.xml.find(f"{{{NS_MARKERS}}}displayed") is not None)

    # After a reload the screen shows what the server has.
    await page.reload()
    await page.wait_for_function("() => performance.getEntriesByName('kith:synced').length > 0")
    await page.get_by_role("button", name="Profile and settings").click()
    await expect(dialog.get_by_label("Last seen")).to_have_value("nobody")
    await expect(dialog.get_by_label("Profile photo")).to_have_value("contacts")
    await expect(dialog.get_by_role("combobox", name="About")).to_have_value("everyone")
    await expect(dialog.get_by_label("Read receipts")).not_to_be_checked()
    # The screen fits a phone (no sideways scrolling in the dialog).
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await dialog.evaluate("(el) => el.scrollWidth <= el.clientWidth")
    # Turning receipts back on works from the same screen.
    await dialog.get_by_label("Read receipts").check()
    await expect(dialog.get_by_text("Privacy settings saved.")).to_be_visible()
    other = await peers.connect(alice, resource="other2", plugins=DEFAULT_PLUGINS)
    assert (await privacy_iq(other)).get("read-receipts") == "true"


@on_module_loop
async def test_the_header_shows_last_seen_only_as_the_contact_allows(peers, tab):
    alice, bob, b = await friends(peers, "pl")
    await privacy_iq(b, "set", **{"last-seen": "nobody"})
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await tab.open_chat(bob.name)
    status = page.locator("#chat-status")
    await expect(status).to_have_text("online")
    await b.close()
    await expect(status).not_to_have_text("online")
    await asyncio.sleep(1)  # the server's answer to the last-activity query has come
    await expect(status).to_have_text("")

    # bob allows his contacts: the page shows his last seen when he goes again.
    b2 = await peers.connect(bob, plugins=DEFAULT_PLUGINS)
    await privacy_iq(b2, "set", **{"last-seen": "contacts"})
    await expect(status).to_have_text("online")
    await b2.close()
    await expect(status).to_have_text(re.compile(r"^last seen today at "))
