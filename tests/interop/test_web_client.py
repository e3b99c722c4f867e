"""The web client (issue 7) in a real browser: Debian's Chromium driven by
Playwright, against the real `kith serve`, with slixmpp as the other party.

One browser per module; each test opens its own browser context (a fresh
profile). Every test also asserts that the page logged no console errors and
that every control has an accessible name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.error
import urllib.request

import pytest
from playwright.async_api import expect

from kithtest.browser import Tab, browser, peers, requires_chromium, tabs  # noqa: F401 (fixtures)
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool, make_friends

# The browser and the slixmpp peers share the module's event loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = [
    requires_chromium,
]

PLUGINS = DEFAULT_PLUGINS + ("xep_0313",)
NS_RECEIPTS = "urn:xmpp:receipts"
NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_STATES = "http://jabber.org/protocol/chatstates"
NS_SID = "urn:xmpp:sid:0"


async def friends(peers):
    """alice (for the browser) and bob (slixmpp, online), subscribed both ways."""
    alice, bob = await peers.account("wa"), await peers.account("wb")
    a = await peers.connect(alice, plugins=PLUGINS)
    b = await peers.connect(bob, plugins=PLUGINS)
    await make_friends(a, b)
    await a.close()
    return alice, bob, b


async def signed_in(peers, tabs, **options):
    """alice signed in in a new browser context, bob online in slixmpp, friends."""
    alice, bob, b = await friends(peers)
    tab = await tabs(**options)
    await tab.sign_in(alice.jid, alice.password)
    return alice, bob, b, tab


@contextlib.asynccontextmanager
async def own_server(server_factory, backend, browser, name, config):
    """A server of its own (`config`), alice signed in to it in a new tab, bob
    online in slixmpp as `phone`, friends; yields (server, pool, tab, alice,
    bob, bob's client) and stops it all afterwards."""
    srv = server_factory.start(name, backend, config)
    pool = ClientPool(srv)
    tab = None
    try:
        alice, bob = await pool.account(f"{name}a"), await pool.account(f"{name}b")
        a = await pool.connect(alice, plugins=PLUGINS)
        b = await pool.connect(bob, resource="phone", plugins=PLUGINS)
        await make_friends(a, b)
        await a.close()
        tab = await Tab.open(browser, srv)
        await tab.sign_in(alice.jid, alice.password)
        yield srv, pool, tab, alice, bob, b
    finally:
        if tab is not None:
            await tab.close()
        await pool.close_all()
        server_factory.stop(srv)


def child(st, ns, name):
    return st.xml.find(f"{{{ns}}}{name}")


def message_with(ns, name, frm=None):
    return lambda s: getattr(s, "name", "") == "message" and child(s, ns, name) is not None \
        and (frm is None or s["from"].bare == frm)


# ---- serving --------------------------------------------------------------------------

def fetch(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_the_page_is_served_with_types_validators_and_a_strict_policy(server):
    base = f"http://{server.host}:{server.http_port}"
    status, headers, body = fetch(base + "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-cache"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert f"ws://{server.host}:{server.http_port}" in csp
    assert b'type="module"' in body
    etag = headers["etag"]
    assert fetch(base + "/", {"If-None-Match": etag})[0] == 304

    status, headers, _ = fetch(base + "/js/main.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert fetch(base + "/app.css")[1]["content-type"].startswith("text/css")
    assert fetch(base + "/sw.js")[1]["content-type"].startswith("text/javascript")
    assert fetch(base + "/no-such-file.js")[0] == 404
    assert fetch(base + "/js/../../Cargo.toml")[0] == 404
    assert fetch(base + "/.hidden")[0] == 404


# ---- chatting -------------------------------------------------------------------------

@on_module_loop
async def test_sign_in_chat_both_ways_with_live_ticks_and_typing(peers, tabs):
    alice, bob, b = await friends(peers)
    tab = await tabs()
    page = tab.page
    await tab.shot("sign-in-phone")
    await tab.use_password()
    await tab.shot("sign-in-password")
    await tab.sign_in(alice.jid, alice.password)
    await expect(tab.chat_row(re.compile(bob.name))).to_be_visible()
    await tab.open_chat(bob.name)

    # typing in the browser: bob sees composing (XEP-0085)
    await page.get_by_label("Type a message").fill("hel")
    await b.wait_for(message_with(NS_STATES, "composing", alice.jid), what="composing from the browser")

    await tab.send("hello bob")
    got = await b.wait_message(lambda m: m["body"] == "hello bob", what="the browser's message")
    assert got["type"] == "chat"
    assert child(got, NS_RECEIPTS, "request") is not None and child(got, NS_MARKERS, "markable") is not None
    origin = child(got, NS_SID, "origin-id").get("id")
    assert origin == got["id"]
    bubble = tab.bubble("hello bob")
    await expect(bubble).to_have_attribute("data-state", "sent")  # ✓: the server acked it (XEP-0198)

    b.send_raw(f"<message to='{alice.jid}' id='r1'><received xmlns='{NS_RECEIPTS}' id='{origin}'/></message>")
    await expect(bubble).to_have_attribute("data-state", "delivered")  # ✓✓
    await expect(bubble.get_by_role("img", name="Delivered")).to_be_visible()
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='d1'><displayed xmlns='{NS_MARKERS}' id='{origin}'/></message>")
    await expect(bubble).to_have_attribute("data-state", "read")  # blue
    await expect(bubble.get_by_role("img", name="Read")).to_be_visible()

    # bob types, then writes: the browser shows both, and acknowledges
    b.send_raw(f"<message to='{alice.jid}' type='chat'><composing xmlns='{NS_STATES}'/></message>")
    await expect(page.locator("#chat-status")).to_have_text("typing…")
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='b1'><body>hi alice</body>"
               f"<request xmlns='{NS_RECEIPTS}'/><markable xmlns='{NS_MARKERS}'/></message>")
    await expect(tab.bubble("hi alice")).to_be_visible()
    await expect(page.locator("#chat-status")).not_to_have_text("typing…")
    receipt = await b.wait_for(message_with(NS_RECEIPTS, "received", alice.jid), what="receipt from the browser")
    assert child(receipt, NS_RECEIPTS, "received").get("id") == "b1"
    shown = await b.wait_for(message_with(NS_MARKERS, "displayed", alice.jid), what="displayed marker")
    assert child(shown, NS_MARKERS, "displayed").get("id") == "b1"
    assert len(b.matching(lambda m: getattr(m, "name", "") == "message" and m["body"] == "hello bob")) == 1
    await tab.shot("conversation")


@on_module_loop
async def test_reply_edit_reactions_and_delete_for_everyone_on_both_sides(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs)
    page = tab.page
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='q1'><body>lunch at noon?</body>"
               f"<origin-id xmlns='{NS_SID}' id='q1'/></message>")
    await tab.open_chat(bob.name)
    await expect(tab.bubble("lunch at noon?")).to_be_visible()

    # reply (XEP-0461)
    await tab.bubble("lunch at noon?").hover()
    await tab.bubble("lunch at noon?").get_by_role("button", name="Message actions").click()
    await page.get_by_role("menuitem", name="Reply").click()
    await tab.send("yes!")
    reply = await b.wait_message(lambda m: "yes!" in (m["body"] or ""), what="reply")
    assert reply.xml.find("{urn:xmpp:reply:0}reply").get("id") == "q1"
    await expect(tab.bubble("yes!").locator(".quote")).to_contain_text("lunch at noon?")

    # reaction (XEP-0444)
    await tab.bubble("lunch at noon?").get_by_role("button", name="Message actions").click()
    await page.get_by_role("menuitem", name="React 👍").click()
    react = await b.wait_for(message_with("urn:xmpp:reactions:0", "reactions", alice.jid), what="reaction")
    assert react.xml.find("{urn:xmpp:reactions:0}reactions").get("id") == "q1"
    await expect(tab.bubble("lunch at noon?").get_by_label("Reactions")).to_contain_text("👍")

    # edit (XEP-0308)
    await tab.send("see you thre")
    sent = await b.wait_message(lambda m: m["body"] == "see you thre", what="typo")
    await tab.bubble("see you thre").get_by_role("button", name="Message actions").click()
    await page.get_by_role("menuitem", name="Edit").click()
    await tab.send("see you there")
    fix = await b.wait_for(message_with("urn:xmpp:message-correct:0", "replace", alice.jid), what="correction")
    assert fix.xml.find("{urn:xmpp:message-correct:0}replace").get("id") == sent["id"]
    assert fix["body"] == "see you there"
    await expect(tab.bubble("see you there")).to_contain_text("edited")

    # delete for everyone (XEP-0424)
    await tab.bubble("see you there").get_by_role("button", name="Message actions").click()
    await page.get_by_role("menuitem", name="Delete for everyone").click()
    gone = await b.wait_for(message_with("urn:xmpp:message-retract:1", "retract", alice.jid), what="retraction")
    assert gone.xml.find("{urn:xmpp:message-retract:1}retract").get("id") == sent["id"]
    await expect(tab.bubble("You deleted this message")).to_be_visible()

    # and the same from bob's side
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='q2'><body>lunch at one</body>"
               "<replace xmlns='urn:xmpp:message-correct:0' id='q1'/></message>")
    await expect(tab.bubble("lunch at one")).to_contain_text("edited")
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='q3'><reactions xmlns='urn:xmpp:reactions:0' id='q1'>"
               "<reaction>❤️</reaction></reactions></message>")
    await expect(tab.bubble("lunch at one").get_by_label("Reactions")).to_contain_text("❤️")
    await tab.shot("reply-edit-react")
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='q4'><retract xmlns='urn:xmpp:message-retract:1' id='q1'/></message>")
    await expect(tab.bubble("This message was deleted")).to_be_visible()
    await expect(tab.bubble("lunch at one")).to_have_count(0)


@on_module_loop
async def test_history_scrolls_back_through_the_archive(peers, tabs):
    alice, bob, b = await friends(peers)
    a = await peers.connect(alice, plugins=PLUGINS)  # another device receives them live
    # more than the chat list's first look (100) and the conversation's first page
    for i in range(1, 151):
        b.send_message(mto=alice.jid, mbody=f"old message {i:03d}", mtype="chat")
    await a.wait_message(lambda m: m["body"] == "old message 150", what="the last of 150")
    await a.close()  # its cursor (the delivered mark a new device starts from) is saved
    await asyncio.sleep(1.5)
    tab = await tabs()
    await tab.sign_in(alice.jid, alice.password)
    await tab.open_chat(bob.name)
    await expect(tab.bubble("old message 150")).to_be_visible()
    await expect(tab.bubble("old message 001")).to_have_count(0)  # not in the first pages
    messages = tab.page.get_by_role("log", name="Messages")
    for _ in range(15):
        if await tab.bubble("old message 001").count():
            break
        # As a reader does: a little down, then to the top again (setting
        # `scrollTop = 0` on a view already at the top fires no scroll event).
        await messages.evaluate("el => el.scrollTop = 200")
        await asyncio.sleep(0.1)
        await messages.evaluate("el => el.scrollTop = 0")
        await asyncio.sleep(0.4)
    await expect(tab.bubble("old message 001")).to_be_visible()
    await expect(tab.bubble(re.compile(r"old message \d{3}"))).to_have_count(150)


@on_module_loop
async def test_a_tall_window_fills_itself_with_older_history(peers, tabs):
    # Older pages load while the view is at its top; a page too short to move
    # it away from the top fires no scroll event, so the next page must follow
    # without one, until the view is full or the conversation's beginning shown.
    alice, bob, b = await friends(peers)
    a = await peers.connect(alice, plugins=PLUGINS)
    for i in range(1, 161):
        b.send_message(mto=alice.jid, mbody=f"filler {i:03d}", mtype="chat")
    await a.wait_message(lambda m: m["body"] == "filler 160", what="the last of 160")
    await a.close()
    await asyncio.sleep(1.5)
    tab = await tabs(viewport={"width": 1280, "height": 12000})
    await tab.sign_in(alice.jid, alice.password)
    await tab.open_chat(bob.name)
    # no scrolling at all: 160 short bubbles are shorter than this window
    await expect(tab.bubble("filler 001")).to_be_visible()
    await expect(tab.bubble(re.compile(r"filler \d{3}"))).to_have_count(160)
    await expect(tab.page.get_by_text("Beginning of the conversation")).to_be_visible()


@on_module_loop
async def test_search_finds_an_old_message_through_full_text(peers, tabs):
    alice, bob, b = await friends(peers)
    b.send_message(mto=alice.jid, mbody="the zebra crossing is on Elm street", mtype="chat")
    b.send_message(mto=alice.jid, mbody="something else entirely", mtype="chat")
    tab = await tabs()
    await tab.sign_in(alice.jid, alice.password)
    await tab.page.get_by_label("Search chats and messages").fill("zebra")
    results = tab.page.get_by_role("region", name="Messages found")
    await expect(results).to_contain_text("the zebra crossing is on Elm street")
    await expect(results).not_to_contain_text("something else")


@on_module_loop
async def test_reload_keeps_the_session_and_a_blip_loses_nothing(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs)
    page = tab.page
    await tab.open_chat(bob.name)
    await page.reload()
    await expect(page.get_by_role("list", name="Chat list")).to_be_visible()
    await expect(page.locator("#chat-name")).to_have_text(bob.name)  # the open chat survives too
    await expect(page.get_by_label("Address or user name")).to_be_hidden()

    # the network drops: the message waits in the outbox, then arrives exactly once
    await tab.send("before the blip")
    await b.wait_message(lambda m: m["body"] == "before the blip", what="first message")
    await tab.context.set_offline(True)
    await expect(page.get_by_role("status")).to_contain_text("Offline")
    await tab.send("sent while offline")
    await expect(tab.bubble("sent while offline")).to_have_attribute("data-state", "pending")
    await asyncio.sleep(1)
    assert not b.matching(lambda m: getattr(m, "name", "") == "message" and m["body"] == "sent while offline")
    await tab.context.set_offline(False)
    await b.wait_message(lambda m: m["body"] == "sent while offline", timeout=20, what="queued message")
    await expect(tab.bubble("sent while offline")).to_have_attribute("data-state", "sent", timeout=15000)
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='after'><body>welcome back</body></message>")
    await expect(tab.bubble("welcome back")).to_be_visible()
    await asyncio.sleep(1)
    bodies = [m["body"] for m in b.received if getattr(m, "name", "") == "message" and m["body"]]
    assert bodies.count("sent while offline") == 1, bodies
    assert bodies.count("before the blip") == 1, bodies
    await expect(tab.bubble("sent while offline")).to_have_count(1)


@on_module_loop
async def test_location_is_shared_and_shown_with_a_map_link(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs, geolocation={"latitude": 52.52, "longitude": 13.405}, permissions=["geolocation"])
    await tab.open_chat(bob.name)
    await tab.page.get_by_role("button", name="Share location").click()
    got = await b.wait_message(lambda m: (m["body"] or "").startswith("geo:"), what="location")
    assert got["body"].startswith("geo:52.520000,13.405000")
    geoloc = got.xml.find("{http://jabber.org/protocol/geoloc}geoloc")
    assert geoloc.find("{http://jabber.org/protocol/geoloc}lat").text == "52.52"
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='g1'><body>geo:48.8584,2.2945</body></message>")
    spot = tab.bubble("48.85840, 2.29450")
    await expect(spot).to_be_visible()
    await expect(spot.get_by_role("link", name="Open map")).to_have_attribute("href", re.compile("mlat=48.8584"))


@on_module_loop
async def test_a_phone_sized_viewport_shows_list_and_conversation_as_screens(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = tab.page
    conversation = page.get_by_role("region", name="Conversation")
    await expect(conversation).to_be_hidden()
    await tab.shot("phone-chat-list")
    await tab.open_chat(bob.name)
    await expect(conversation).to_be_visible()
    await expect(page.get_by_role("list", name="Chat list")).to_be_hidden()
    await tab.send("from my phone")
    await b.wait_message(lambda m: m["body"] == "from my phone", what="phone message")
    await tab.shot("phone-conversation")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    await page.get_by_role("button", name="Back to chats").click()
    await expect(page.get_by_role("list", name="Chat list")).to_be_visible()
    await expect(tab.chat_row(re.compile(bob.name))).to_contain_text("from my phone")


@on_module_loop
@pytest.mark.parametrize("archive", [True, False], ids=["archive", "no-archive"])
async def test_a_server_restart_mid_chat_loses_and_duplicates_nothing(backend, server_factory, browser, archive):
    """Resumption is impossible after a restart: the client binds a fresh session,
    finds in the archive which queued messages the server already has, and sends
    only the rest. A server without an archive refuses the question: the client
    sends what it holds (the server drops a resend it still has)."""
    async with own_server(server_factory, backend, browser, "webrestart",
                          {"archive": {"enabled": archive}}) as (srv, pool, tab, alice, bob, b):
        await tab.open_chat(bob.name)
        await tab.send("before the restart")
        await b.wait_message(lambda m: m["body"] == "before the restart", what="first message")
        await expect(tab.bubble("before the restart")).to_have_attribute("data-state", "sent")

        await b.close()
        srv.stop()
        await expect(tab.page.get_by_role("status")).to_be_visible()
        await tab.send("typed while the server was down")
        await expect(tab.bubble("typed while the server was down")).to_have_attribute("data-state", "pending")
        srv.start()
        await expect(tab.bubble("typed while the server was down")).to_have_attribute("data-state", "sent", timeout=30000)

        b2 = await pool.connect(bob, resource="phone", plugins=PLUGINS)
        await b2.wait_message(lambda m: m["body"] == "typed while the server was down", what="queued message")
        await asyncio.sleep(1)
        bodies = [m["body"] for m in b2.received if getattr(m, "name", "") == "message" and m["body"]]
        assert bodies.count("typed while the server was down") == 1, bodies
        assert "before the restart" not in bodies, bodies  # already delivered before the restart
        await expect(tab.bubble("typed while the server was down")).to_have_count(1)
        # Chromium itself logs each refused reconnection while the server is down.
        errors = [e for e in tab.errors if not re.search(r"WebSocket connection to .* failed", e)]
        assert not errors, errors


@on_module_loop
async def test_without_an_archive_the_client_says_why_history_and_search_are_missing(
        backend, server_factory, browser):
    """`[archive] enabled = false`: the server refuses MAM; the conversation says
    that only what reached this browser is shown (no endless history requests),
    and a search says it needs an archive instead of "No messages found"."""
    async with own_server(server_factory, backend, browser, "webnoarchive",
                          {"archive": {"enabled": False}}) as (_, _, tab, alice, bob, b):
        b.send_message(mto=alice.jid, mbody="live while the tab is open", mtype="chat")
        await tab.open_chat(bob.name)
        await expect(tab.bubble("live while the tab is open")).to_be_visible()
        log = tab.page.get_by_role("log", name="Messages")
        await expect(log).to_contain_text("This server keeps no message history")
        await expect(log).not_to_contain_text("Beginning of the conversation")
        await tab.page.get_by_label("Search chats and messages").fill("while the tab")
        results = tab.page.get_by_role("region", name="Messages found")
        await expect(results).to_contain_text("needs a message archive")
        errors = [e for e in tab.errors if "service-unavailable" not in e]
        assert not errors, errors


@on_module_loop
async def test_profile_name_reaches_contacts_and_the_theme_switches(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs)
    page = tab.page
    await page.get_by_role("button", name="Profile and settings").click()
    dialog = page.get_by_role("dialog", name="Profile and settings")
    await dialog.get_by_label("Your name").fill("Alice Liddell")
    await dialog.get_by_label("Dark").check()
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
    await tab.shot("settings-dark")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    card = await b.plugin["xep_0054"].get_vcard(alice.jid, cached=False, timeout=10)
    assert card.xml.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Alice Liddell"
    await page.reload()
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"


@on_module_loop
async def test_the_keyboard_alone_opens_a_chat_and_sends(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs)
    page = tab.page
    await expect(tab.chat_row(re.compile(bob.name))).to_be_visible()
    await page.get_by_label("Search chats and messages").focus()
    await page.keyboard.type(bob.name[:4])
    for _ in range(6):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.closest('#chat-list') !== null"):
            break
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused chat row has no visible focus"
    await page.keyboard.press("Enter")
    await expect(page.locator("#chat-name")).to_have_text(bob.name)
    await page.keyboard.type("typed with keys only")
    await page.keyboard.press("Enter")
    await b.wait_message(lambda m: m["body"] == "typed with keys only", what="keyboard message")


@on_module_loop
async def test_a_wrong_password_gets_a_clear_message(peers, tabs):
    alice = await peers.account("wpw")
    tab = await tabs()
    page = tab.page
    await tab.use_password()
    await page.get_by_label("Address or user name").fill(alice.jid)
    await page.get_by_role("textbox", name="Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong user name or password")
    await expect(page.get_by_role("button", name="Sign in")).to_be_enabled()
    await tab.sign_in(alice.jid, alice.password)  # and the right one still works


@on_module_loop
async def test_unread_counts_and_the_new_messages_divider(peers, tabs):
    alice, bob, b = await friends(peers)
    carol = await peers.account("wc")
    c = await peers.connect(carol, plugins=PLUGINS)
    tab = await tabs()
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await tab.open_chat(bob.name)
    b.send_message(mto=alice.jid, mbody="read right away", mtype="chat")
    await expect(tab.bubble("read right away")).to_be_visible()
    c.send_raw(f"<message to='{alice.jid}' type='chat' id='c1'><body>first from carol</body></message>")
    c.send_raw(f"<message to='{alice.jid}' type='chat' id='c2'><body>second from carol</body>"
               f"<markable xmlns='{NS_MARKERS}'/></message>")
    row = tab.chat_row(re.compile(f"{carol.name}, 2 unread"))
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("second from carol")
    rows = page.get_by_role("list", name="Chat list").get_by_role("listitem")
    await expect(rows.first).to_contain_text(carol.name)  # most recent activity first
    await row.click()
    await expect(page.get_by_role("separator").filter(has_text="New messages")).to_be_visible()
    await expect(tab.chat_row(re.compile(f"^{carol.name}$"))).to_be_visible()  # no longer unread
    shown = await c.wait_for(message_with(NS_MARKERS, "displayed", alice.jid), what="displayed marker for carol")
    assert child(shown, NS_MARKERS, "displayed").get("id") == "c2"


@on_module_loop
async def test_a_shared_file_link_shows_as_a_document(peers, tabs, server):
    """XEP-0066 out-of-band links, as Conversations and Gajim send uploads."""
    alice, bob, b, tab = await signed_in(peers, tabs)
    await tab.open_chat(bob.name)
    url = f"http://{server.host}:{server.http_port}/files/abc/minutes%202026.pdf"
    b.send_raw(f"<message to='{alice.jid}' type='chat' id='f1'><body>{url}</body>"
               f"<x xmlns='jabber:x:oob'><url>{url}</url></x></message>")
    link = tab.page.get_by_role("link", name="minutes 2026.pdf")
    await expect(link).to_have_attribute("href", url)
    await expect(tab.chat_row(re.compile(bob.name))).to_contain_text("minutes 2026.pdf")
    # the server has an upload service (XEP-0363): files can be attached
    await expect(tab.page.get_by_role("button", name="Attach a file")).to_be_visible()


@on_module_loop
async def test_online_then_last_seen_and_blocking(peers, tabs):
    alice, bob, b, tab = await signed_in(peers, tabs)
    page = tab.page
    await tab.open_chat(bob.name)
    status = page.locator("#chat-status")
    await expect(status).to_have_text("online")
    await b.close()
    await expect(status).to_have_text(re.compile(r"^last seen today at "))

    await page.get_by_role("button", name="Block contact").click()
    await expect(page.get_by_text("You blocked this contact.")).to_be_visible()
    await expect(page.get_by_label("Type a message")).to_be_hidden()
    b2 = await peers.connect(bob, plugins=PLUGINS)
    b2.send_raw(f"<message to='{alice.jid}' type='chat' id='x1'><body>can you hear me</body></message>")
    await b2.wait_for(lambda s: getattr(s, "name", "") == "message" and s["type"] == "error", what="bounce")
    await expect(tab.bubble("can you hear me")).to_have_count(0)
    await page.get_by_role("button", name="Unblock").first.click()
    await expect(page.get_by_label("Type a message")).to_be_visible()


@on_module_loop
async def test_the_client_scram_matches_the_rfc_7677_example(tabs):
    """The browser's own SCRAM-SHA-256 (WebCrypto) against RFC 7677 §3."""
    tab = await tabs()
    final = await tab.page.evaluate("""async () => {
      const { Scram } = await import('/js/xmpp/scram.js');
      const s = new Scram('user', { password: 'pencil' });
      s.nonce = 'rOprNGfwEbeRWgbNEkqO';
      s.firstBare = 'n=user,r=rOprNGfwEbeRWgbNEkqO';
      const out = await s.challenge(btoa('r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096'));
      await s.verify(btoa('v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='));
      return atob(out);
    }""")
    assert final == ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
