"""Phone sign-in and linked devices in the web client (issue 7), in Debian's
Chromium against the zero-config server (console SMS sender: the test reads the
code from the server log, as a developer would). The "phone" is a device made
through the HTTP API with plain urllib; it approves the browser's link code.
"""

from __future__ import annotations

import re

import pytest
import pytest_asyncio
from playwright.async_api import expect

from kithtest.api import Api, us_number, wait_until
from kithtest.browser import Tab, browser, requires_chromium  # noqa: F401 (fixture)

on_module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = [
    requires_chromium,
]
SIGNED_OUT = "This browser was signed out"


@pytest_asyncio.fixture(loop_scope="module")
async def tabs(browser, server):  # noqa: F811
    opened: list[Tab] = []

    async def open_tab() -> Tab:
        t = await Tab.open(browser, server)
        opened.append(t)
        return t

    yield open_tab
    for t in opened:
        # A revoked device's own API calls answer 401: the one error the browser logs.
        await t.close_clean(ignore="401")


async def sms_code(server, phone: str, seen: int = 0) -> str:
    """The code the console sender printed for `phone` (the `seen`-th one, from 0)."""
    pattern = re.compile(rf"SMS code \(console sender\) phone={re.escape(phone)} code=(\d{{6}})")
    found = await wait_until(lambda: len(pattern.findall(server.log_path.read_text(errors="replace"))) > seen,
                             what="SMS code in the server log")
    assert found
    return pattern.findall(server.log_path.read_text(errors="replace"))[seen]


async def phone_device(server, phone: str) -> dict:
    """Signs `phone` up through the HTTP API (the user's phone): jid, device_id, credential."""
    api = Api(server)
    r = await api.call("POST", "/register/start", {"phone": phone})
    assert r.status == 200, r
    r = await api.call("POST", "/register/verify",
                       {"phone": phone, "code": await sms_code(server, phone), "device_name": "Phone"})
    assert r.status == 200, r
    return r.body


@on_module_loop
async def test_phone_sign_in_with_the_sms_code_and_a_wrong_code_first(server, tabs):
    tab = await tabs()
    page = tab.page
    phone = us_number()
    await page.get_by_role("tab", name="Phone number").click()
    await page.get_by_role("textbox", name="Phone number").fill(phone)
    await page.get_by_role("button", name="Send code").click()
    code = await sms_code(server, phone)
    box = page.get_by_label("Code from the SMS")
    await box.fill("000000" if code != "000000" else "111111")
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("alert").filter(has_text=re.compile(r"\w"))).to_be_visible()
    await expect(page.get_by_role("list", name="Chat list")).to_be_hidden()
    await box.fill(code)
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("list", name="Chat list")).to_be_visible(timeout=15000)
    # the session persists across a reload
    await page.reload()
    await expect(page.get_by_role("list", name="Chat list")).to_be_visible(timeout=15000)
    await page.get_by_role("button", name="Profile and settings").click()
    await expect(page.locator("#settings-jid")).to_have_text(phone[1:] + "@localhost")
    await expect(page.get_by_role("list").filter(has_text="(this browser)")).to_be_visible()
    # a failed wrong-code request logs its 4xx in the console: expected here
    tab.errors = [e for e in tab.errors if "status of 4" not in e]


@on_module_loop
async def test_linking_this_browser_by_code_then_revoking_it_signs_it_out(server, tabs):
    phone = us_number()
    owner = await phone_device(server, phone)
    api = Api(server)
    tab = await tabs()
    page = tab.page
    await page.get_by_role("tab", name="Link device").click()
    await page.get_by_role("button", name="Show a link code").click()
    await expect(page.get_by_alt_text("QR code of the link code")).to_be_visible()
    code = (await page.locator("#link-code").text_content() or "").strip()
    assert len(code) >= 6, code
    r = await api.call("POST", "/link/approve", {"code": code}, token=owner["credential"])
    assert r.status == 200, r
    await expect(page.get_by_role("list", name="Chat list")).to_be_visible(timeout=15000)

    # The browser's list shows the phone and itself; the phone sees the browser.
    await page.get_by_role("button", name="Profile and settings").click()
    devices = page.locator("#devices-list")
    await expect(devices.get_by_role("listitem")).to_have_count(2)
    await expect(devices).to_contain_text("Phone")
    listed = await api.call("GET", "/devices", token=owner["credential"])
    browser_device = next(d for d in listed.body["devices"] if not d["current"])
    await tab.shot("linked-devices")
    # A privacy setting changed in the linked browser is the account's: the
    # phone reads it over the HTTP API.
    await page.get_by_label("Profile photo").select_option("nobody")
    await expect(page.get_by_text("Privacy settings saved.")).to_be_visible()
    privacy = await api.call("GET", "/privacy", token=owner["credential"])
    assert privacy.body["profile_photo"] == "nobody", privacy
    await page.get_by_role("button", name="Close").click()

    # Something typed and not sent yet when the phone revokes the browser ...
    await page.get_by_role("button", name="New chat").click()
    await page.get_by_role("dialog", name="New chat").get_by_label("Address").fill("friend")
    await page.get_by_role("button", name="Start chat").click()
    await page.get_by_label("Type a message").fill("half-written thought")
    r = await api.call("DELETE", f"/devices/{browser_device['id']}", token=owner["credential"])
    assert r.status == 204
    # ... the page says it was signed out and that the text is kept ...
    alert = page.get_by_role("alert").filter(has_text=SIGNED_OUT)
    await expect(alert).to_be_visible(timeout=15000)
    await expect(alert).to_contain_text("What you typed and had not sent is kept")
    await expect(page.get_by_role("list", name="Chat list")).to_be_hidden()
    await page.reload()  # and the stored session is gone
    await expect(page.get_by_role("tab", name="Phone number")).to_be_visible()

    # ... and it is back when the account signs in on this browser again.
    await page.get_by_role("tab", name="Link device").click()
    await page.get_by_role("button", name="Show a link code").click()
    await expect(page.locator("#link-code")).to_have_text(re.compile(r"\w{4}"))
    code = (await page.locator("#link-code").text_content() or "").strip()
    r = await api.call("POST", "/link/approve", {"code": code}, token=owner["credential"])
    assert r.status == 200, r
    await tab.chat_row("friend").click()
    await expect(page.get_by_label("Type a message")).to_have_value("half-written thought")


@on_module_loop
async def test_removing_this_browser_in_its_own_device_list_signs_it_out(server, tabs):
    phone = us_number()
    owner = await phone_device(server, phone)
    tab = await tabs()
    page = tab.page
    await page.get_by_role("tab", name="Phone number").click()
    await page.get_by_role("textbox", name="Phone number").fill(phone)
    await page.get_by_role("button", name="Send code").click()
    await page.get_by_label("Code from the SMS").fill(await sms_code(server, phone, seen=1))
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("list", name="Chat list")).to_be_visible(timeout=15000)
    await page.get_by_role("button", name="Profile and settings").click()
    await page.get_by_role("button", name=re.compile(r"^Remove .*\(this browser\)$")).click()
    await expect(page.get_by_role("tab", name="Phone number")).to_be_visible(timeout=15000)
    listed = await Api(server).call("GET", "/devices", token=owner["credential"])
    assert [d["name"] for d in listed.body["devices"]] == ["Phone"]
