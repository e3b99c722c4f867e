"""Media in the web client (issue 7) in Debian's Chromium: an image attached in
the page is previewed, uploaded (XEP-0363) and shared (XEP-0066 + XEP-0447);
slixmpp gets the URL and can GET the same bytes. An image slixmpp shares shows
as the server's thumbnail and opens in a viewer. Voice notes are recorded with
MediaRecorder on Chromium's fake microphone; documents show name and size.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import pytest_asyncio
from playwright.async_api import async_playwright, expect

from kithtest.browser import CHROMIUM_ARGS, Tab, chromium_path, peers, requires_chromium  # noqa: F401 (fixture)
from kithtest.media import https, image_bytes, pdf_bytes, upload, wait_meta
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool, make_friends

on_module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = [
    requires_chromium,
]
PLUGINS = DEFAULT_PLUGINS + ("xep_0363",)
NS_OOB = "jabber:x:oob"
NS_SFS = "urn:xmpp:sfs:0"
NS_FILE = "urn:xmpp:file:metadata:0"
# Chromium's fake microphone (a beep) and no permission prompt.
MEDIA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS + MEDIA_ARGS, headless=True)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def chat(browser, server, peers):  # noqa: F811
    """alice in the browser (uploads go to the HTTPS port, with the test CA), bob in slixmpp, friends."""
    alice, bob = await peers.account("ma"), await peers.account("mb")
    a = await peers.connect(alice, plugins=PLUGINS)
    b = await peers.connect(bob, plugins=PLUGINS)
    await make_friends(a, b)
    await a.close()
    tab = await Tab.open(browser, server, ignore_https_errors=True, permissions=["microphone"])
    await tab.sign_in(alice.jid, alice.password)
    await tab.open_chat(bob.name)
    yield tab, alice, bob, b
    await tab.close_clean()


def shared_url(m) -> str | None:
    x = m.xml.find(f"{{{NS_OOB}}}x/{{{NS_OOB}}}url")
    return x.text if x is not None else None


def has_oob(m) -> bool:
    return getattr(m, "name", "") == "message" and shared_url(m) is not None


@on_module_loop
async def test_an_image_is_previewed_sent_and_fetched_by_the_peer(chat, server):
    tab, alice, bob, b = chat
    page = tab.page
    data = image_bytes("PNG", (640, 480))
    await page.get_by_label("Files to send").set_input_files(
        files=[{"name": "sunset.png", "mimeType": "image/png", "buffer": data}])
    dialog = page.get_by_role("dialog", name="Send image")
    await expect(dialog.get_by_role("img", name="Preview of sunset.png")).to_be_visible()
    await dialog.get_by_label("Caption").fill("the view tonight")
    await tab.shot("image-preview")
    await dialog.get_by_role("button", name="Send").click()

    got = await b.wait_message(has_oob, what="the image link at bob")
    url = shared_url(got)
    assert got["body"] == url and url.endswith("/sunset.png")
    sfs = got.xml.find(f"{{{NS_SFS}}}file-sharing/{{{NS_FILE}}}file")
    assert sfs is not None and sfs.findtext(f"{{{NS_FILE}}}name") == "sunset.png"
    assert sfs.findtext(f"{{{NS_FILE}}}size") == str(len(data))
    fetched = await asyncio.to_thread(https(server).get, url, timeout=20)
    assert fetched.status_code == 200 and fetched.content == data
    await b.wait_message(lambda m: getattr(m, "name", "") == "message" and m["body"] == "the view tonight",
                         what="the caption")
    # the sender's own bubble shows the picture too
    await expect(page.get_by_role("button", name="Open image sunset.png")).to_be_visible()


@on_module_loop
async def test_an_image_from_slixmpp_shows_its_thumbnail_and_opens_full_size(chat, server):
    tab, alice, bob, b = chat
    page = tab.page
    session = https(server)
    data = image_bytes("JPEG", (1600, 1200))
    slot = await upload(b, session, "harbour.jpg", data, "image/jpeg")
    meta = await asyncio.to_thread(wait_meta, session, slot.get_url)
    assert meta.get("blurhash") and meta.get("thumbnail")
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='img1'><body>{slot.get_url}</body>"
               f"<x xmlns='{NS_OOB}'><url>{slot.get_url}</url></x></message>")
    opener = page.get_by_role("button", name="Open image harbour.jpg")
    await expect(opener).to_be_visible()
    img = opener.locator("img")
    await expect(img).to_have_attribute("src", slot.get_url + "?thumb")
    await expect(opener).to_have_css("background-image", re.compile(r"data:image/png"))  # the BlurHash
    await page.wait_for_function("(el) => el.complete && el.naturalWidth > 0 && el.naturalWidth < 1600",
                                 arg=await img.element_handle())
    await opener.click()
    viewer = page.get_by_role("dialog", name="Image", exact=True)
    await expect(viewer.locator("img")).to_have_attribute("src", slot.get_url)
    await tab.shot("image-viewer")
    await viewer.get_by_role("button", name="Close").click()


@on_module_loop
async def test_a_voice_note_is_recorded_sent_and_playable(chat, server):
    tab, alice, bob, b = chat
    page = tab.page
    await page.get_by_role("button", name="Record a voice note").click()
    await expect(page.get_by_role("button", name="Stop and send the voice note")).to_be_visible()
    await asyncio.sleep(1.5)
    await page.get_by_role("button", name="Stop and send the voice note").click()
    got = await b.wait_message(lambda m: has_oob(m) and "/voice-" in shared_url(m), what="the voice note")
    url = shared_url(got)
    fetched = await asyncio.to_thread(https(server).get, url, timeout=20)
    assert fetched.status_code == 200 and len(fetched.content) > 500
    assert fetched.headers["content-type"].startswith("audio/")
    player = page.locator("audio[aria-label='Voice note']")
    await expect(player).to_have_count(1)
    await page.wait_for_function("(el) => el.readyState >= 1", arg=await player.element_handle())


@on_module_loop
async def test_a_document_shows_its_name_and_size_and_downloads(chat, server):
    tab, alice, bob, b = chat
    page = tab.page
    data = pdf_bytes()
    await page.get_by_label("Files to send").set_input_files(
        files=[{"name": "minutes.pdf", "mimeType": "application/pdf", "buffer": data}])
    got = await b.wait_message(lambda m: has_oob(m) and shared_url(m).endswith("/minutes.pdf"), what="the document")
    link = page.get_by_role("link", name="minutes.pdf")
    await expect(link).to_have_attribute("href", shared_url(got))
    await expect(link.locator("xpath=..")).to_contain_text(re.compile(r"\d+(\.\d)? (B|KB)"))
    await expect(link).to_have_attribute("download", "minutes.pdf")
    fetched = await asyncio.to_thread(https(server).get, shared_url(got), timeout=20)
    assert fetched.status_code == 200 and fetched.content == data


@on_module_loop
async def test_an_over_size_file_gets_a_clear_message_and_nothing_typed_is_lost(backend, server_factory, browser):
    """The limit comes from the upload service's disco#info (XEP-0363 §3
    max-file-size); a bigger file is refused in the page, before any upload."""
    srv = server_factory.start("webbigfile", backend, {"upload": {"max_file_size": 2048}})
    pool = ClientPool(srv)
    tab = None
    try:
        alice, bob = await pool.account("mo"), await pool.account("mp")
        a = await pool.connect(alice, plugins=PLUGINS)
        b = await pool.connect(bob, plugins=PLUGINS)
        await make_friends(a, b)
        await a.close()
        tab = await Tab.open(browser, srv, ignore_https_errors=True)
        await tab.sign_in(alice.jid, alice.password)
        await tab.open_chat(bob.name)
        page = tab.page
        await page.get_by_label("Type a message").fill("half-typed reply")
        await page.get_by_label("Files to send").set_input_files(
            files=[{"name": "big.pdf", "mimeType": "application/pdf", "buffer": pdf_bytes() + b"\0" * 4096}])
        await expect(page.get_by_role("status")).to_contain_text("big.pdf is too large")
        await expect(page.get_by_role("status")).to_contain_text("at most 2.0 KB")
        await expect(page.get_by_label("Type a message")).to_have_value("half-typed reply")
        await asyncio.sleep(0.5)
        assert not b.matching(has_oob), "nothing is shared"
        await expect(page.locator(".msg")).to_have_count(0)
        assert not tab.errors, tab.errors
        assert not await tab.unnamed_controls()
    finally:
        if tab is not None:
            await tab.close()
        await pool.close_all()
        server_factory.stop(srv)
