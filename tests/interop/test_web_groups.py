"""The web client's groups (issue 7) in Debian's Chromium: a group made in the
browser is a XEP-0045 room that slixmpp members join and talk in; members,
admins, announcement mode and invite links (`urn:kith:group-invite:0`) from the
group info screen; group messages sent while the browser was away appear after
reload (they come from the inbox log). Same fixtures as test_web_client.py:
no console errors, every control labelled.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import pytest_asyncio
from playwright.async_api import expect
from slixmpp.exceptions import IqError

from kithtest.browser import Tab, browser, peers, requires_chromium, tabs  # noqa: F401 (fixtures)
from kithtest.media import image_bytes
from kithtest.muc import (NS_USER, PLUGINS, SERVICE, configure, invite_iq, is_groupchat, join, muc_item, new_room,
                          room_stanza_id)

on_module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = [
    requires_chromium,
]


@pytest_asyncio.fixture(loop_scope="module")
async def tab(tabs):  # noqa: F811
    return await tabs()


def is_invitation(m) -> bool:
    x = m.xml.find(f"{{{NS_USER}}}x")
    return getattr(m, "name", "") == "message" and x is not None and x.find(f"{{{NS_USER}}}invite") is not None


async def create_group(tab: Tab, name: str, *members: str) -> None:
    page = tab.page
    await page.get_by_role("button", name="New group").click()
    dialog = page.get_by_role("dialog", name="New group")
    await dialog.get_by_label("Group name").fill(name)
    await dialog.get_by_role("textbox", name=re.compile("^Members")).fill("\n".join(members))
    await dialog.get_by_role("button", name="Create group").click()
    await expect(page.locator("#chat-name")).to_have_text(name)


@on_module_loop
async def test_a_group_made_in_the_browser_is_a_room_members_talk_in(peers, tab):
    alice, bob, carol = await peers.account("ga"), await peers.account("gb"), await peers.account("gc")
    b = await peers.connect(bob, plugins=PLUGINS)
    c = await peers.connect(carol, plugins=PLUGINS)
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await create_group(tab, "Book club", bob.jid, carol.name)  # a bare name gets the domain
    await expect(tab.chat_row(re.compile("Book club"))).to_be_visible()

    # Both members are told (a mediated invitation from the room, XEP-0045 §7.8.2).
    invited = await b.wait_message(is_invitation, what="invitation to bob")
    room = invited["from"].bare
    assert room.endswith("@" + SERVICE)
    await c.wait_message(is_invitation, what="invitation to carol")

    await join(b, room, "Bob")
    b.send_message(mto=room, mbody="hello from bob", mtype="groupchat")
    bubble = tab.bubble("hello from bob")
    await expect(bubble).to_be_visible()
    await expect(bubble.locator(".sender")).to_have_text("Bob")  # sender names in bubbles

    await tab.send("hi all")
    got = await b.wait_message(is_groupchat("hi all"), what="alice's group message at bob")
    assert got["from"].resource  # from the room as alice's occupant nick
    # carol never entered the room: the message still reaches her (her inbox log)
    await c.wait_message(is_groupchat("hi all"), what="alice's group message at carol")
    await expect(tab.bubble("hi all").locator(".tick")).to_have_attribute("aria-label", re.compile("Sent|Delivered|Read"))
    await tab.shot("group-chat")

    # Group info: members, make admin, remove, announcement mode.
    await page.get_by_role("button", name="Group info").click()
    page = page.get_by_role("dialog", name="Group info")  # the rest happens in this dialog
    members = page.get_by_role("list", name="Members")
    await expect(members.get_by_role("listitem")).to_have_count(3)
    await expect(members).to_contain_text("Group owner")
    await page.get_by_role("button", name=re.compile(f"^Make {bob.name} admin")).click()
    admin = await b.wait_presence(lambda p: muc_item(p).get("affiliation") == "admin", what="bob made admin")
    assert admin["from"].bare == room
    await expect(members.get_by_role("listitem").filter(has_text=bob.name)).to_contain_text("Group admin")
    await page.get_by_role("button", name=f"Remove {carol.name}").click()
    await expect(members.get_by_role("listitem")).to_have_count(2)
    listed = await b.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
    assert carol.jid not in listed

    await page.get_by_label("Only admins can send messages").check()
    await expect(tab.page.locator("#chat-status")).to_have_text("Only admins can send messages")
    info = await b.plugin["xep_0030"].get_info(jid=room, timeout=10)
    assert "muc_moderated" in info["disco_info"]["features"]

    # Invite link: create, redeem by a non-member, revoke, refused afterwards.
    await page.get_by_role("button", name="Create link").click()
    link = page.get_by_role("textbox", name="Invite link")
    await expect(link).to_have_value(re.compile(r"/join/"))
    token = (await link.input_value()).rsplit("/", 1)[-1]
    joined = await invite_iq(c, SERVICE, "redeem", token=token)
    assert joined.get("room") == room
    await tab.shot("group-info")
    await page.get_by_role("button", name="Revoke link").click()
    await expect(link).to_have_value("")
    dave = await peers.connect(await peers.account("gd"), plugins=PLUGINS)
    with pytest.raises(IqError) as refused:
        await invite_iq(dave, SERVICE, "redeem", token=token)
    assert refused.value.iq["error"]["condition"] == "forbidden"
    await page.get_by_role("button", name="Close").click()


@on_module_loop
async def test_group_messages_sent_while_the_browser_was_away_appear_after_reload(peers, tab):
    alice, bob = await peers.account("go"), await peers.account("gp")
    b = await peers.connect(bob, plugins=PLUGINS)
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await create_group(tab, "Weekend", bob.jid)
    room = (await b.wait_message(is_invitation, what="invitation"))["from"].bare
    await join(b, room, "Bob")

    await page.goto("about:blank")  # the browser goes away
    b.send_message(mto=room, mbody="sent while you were away", mtype="groupchat")
    await b.wait_message(is_groupchat("sent while you were away"), what="bob's own echo")
    await page.goto(tab.base_url)
    await expect(tab.chat_row(re.compile("Weekend"))).to_be_visible(timeout=15000)
    await tab.chat_row(re.compile("Weekend")).click()
    bubble = tab.bubble("sent while you were away")
    await expect(bubble).to_be_visible()
    await expect(bubble.locator(".sender")).to_have_text("Bob")
    # and the browser is back in the room: its message reaches bob
    await tab.send("back again")
    await b.wait_message(is_groupchat("back again"), what="alice's message after reload")


@on_module_loop
async def test_profile_name_and_about_are_published_in_pep(peers, tab):
    """Settings: the name goes out as the PEP nick (XEP-0172), the about text as
    the vCard4 NOTE (XEP-0292), both read back here by another client of the account."""
    alice = await peers.account("gq")
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await page.get_by_role("button", name="Profile and settings").click()
    await page.get_by_label("Your name").fill("Alice Liddell")
    await page.get_by_role("textbox", name="About").fill("Down the rabbit hole")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("dialog", name="Profile and settings")).to_be_hidden()
    other = await peers.connect(alice, plugins=PLUGINS + ("xep_0060",))
    vcard = await other.plugin["xep_0060"].get_items(alice.jid, "urn:xmpp:vcard4", timeout=10)
    text = "{urn:ietf:params:xml:ns:vcard-4.0}"
    note = vcard.xml.find(f".//{text}note/{text}text")
    assert note is not None and note.text == "Down the rabbit hole"
    nick = await other.plugin["xep_0060"].get_items(alice.jid, "http://jabber.org/protocol/nick", timeout=10)
    assert nick.xml.find(".//{http://jabber.org/protocol/nick}nick").text == "Alice Liddell"
    # and the settings screen shows it again after a reload
    await page.reload()
    await page.wait_for_function("() => performance.getEntriesByName('kith:synced').length > 0")  # profile loaded
    await page.get_by_role("button", name="Profile and settings").click()
    await expect(page.get_by_role("textbox", name="About")).to_have_value("Down the rabbit hole")


NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_STATES = "http://jabber.org/protocol/chatstates"


@on_module_loop
async def test_a_group_photo_set_in_the_browser_shows_for_another_member(peers, tabs):
    """The photo is the room's vCard PHOTO (XEP-0054 on the room, as XEP-0486);
    the room tells occupants with status 104 and their pages fetch it again."""
    alice, bob = await peers.account("gv"), await peers.account("gw")
    first, second = await tabs(), await tabs()
    await second.sign_in(bob.jid, bob.password)
    await first.sign_in(alice.jid, alice.password)
    await create_group(first, "Climbers", bob.jid)
    row = second.chat_row(re.compile("Climbers"))
    await expect(row).to_be_visible(timeout=15000)  # bob's page was told and entered the room
    await row.click()
    header = second.page.locator("#chat-avatar")
    await expect(header).to_have_text("C")  # no photo yet: the initial

    page = first.page
    await page.get_by_role("button", name="Group info").click()
    dialog = page.get_by_role("dialog", name="Group info")
    await dialog.get_by_label("Change group photo").set_input_files(
        files=[{"name": "rock.png", "mimeType": "image/png", "buffer": image_bytes("PNG", (64, 48))}])
    await expect(dialog.locator("#group-avatar")).to_have_attribute("style", re.compile("data:image/jpeg"))
    await dialog.get_by_role("button", name="Close").click()
    await expect(first.chat_row(re.compile("Climbers")).locator(".avatar")).to_have_attribute(
        "style", re.compile("data:image/jpeg"))

    # bob's page: the header and the chat list, without a reload
    await expect(header).to_have_attribute("style", re.compile("data:image/jpeg"), timeout=10000)
    await expect(row.locator(".avatar")).to_have_attribute("style", re.compile("data:image/jpeg"))
    # and a standard client reads the same photo from the room's vCard
    b = await peers.connect(bob, plugins=PLUGINS + ("xep_0054",))
    card = await b.plugin["xep_0054"].get_vcard(await room_of(first), cached=False, timeout=10)
    assert card.xml.findtext("{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}TYPE") == "image/jpeg"


async def room_of(tab: Tab) -> str:
    """The JID of the chat open in the page (the URL's fragment)."""
    return await tab.page.evaluate("decodeURIComponent(location.hash.slice(1))")


@on_module_loop
async def test_an_invite_link_opens_in_the_page_and_joins_the_group(peers, tabs, server):
    """A member makes a link (slixmpp, `urn:kith:group-invite:0`); the link's page
    sends the browser to `/#join=<token>`, which asks to sign in, shows the
    group's name, joins on request and opens the group."""
    alice, bob = await peers.account("gj"), await peers.account("gk")
    a = await peers.connect(alice, plugins=PLUGINS)
    room = new_room("hike")
    await join(a, room, "Alice")
    await configure(a, room, roomname="Hiking trip")
    link = await invite_iq(a, room, "create")
    url = link.get("url")
    token = link.get("token")
    assert url.endswith("/join/" + token)

    tab = await tabs()
    page = tab.page
    await page.goto(f"{tab.base_url}join/{token}")  # the link's page (its host is the configured domain)
    await expect(page.get_by_role("heading", name="Hiking trip")).to_be_visible()
    await page.get_by_role("link", name="Join in the web client").click()
    await tab.sign_in(bob.jid, bob.password)  # not signed in yet: sign-in first, the link waits
    dialog = page.get_by_role("dialog", name="Join group")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#join-name")).to_have_text("Hiking trip")
    await tab.shot("join-group")
    await dialog.get_by_role("button", name="Join group").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#chat-name")).to_have_text("Hiking trip")
    await expect(tab.chat_row(re.compile("Hiking trip"))).to_be_visible()
    listed = await a.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
    assert bob.jid in listed

    # They talk: alice's message shows, bob's reaches alice.
    a.send_message(mto=room, mbody="welcome bob", mtype="groupchat")
    await expect(tab.bubble("welcome bob")).to_be_visible()
    await tab.send("thanks for the link")
    await a.wait_message(is_groupchat("thanks for the link"), what="bob's first group message")

    # A revoked link gets a clear message and no Join button.
    await invite_iq(a, room, "revoke", token=token)
    await page.goto(f"{tab.base_url}#join={token}")
    await expect(dialog.get_by_role("alert")).to_have_text(re.compile("revoked"))
    await expect(dialog.get_by_role("button", name="Join group")).to_be_hidden()
    # an unknown one too (the page's own 404 for the preview is expected in the console)
    await dialog.get_by_role("button", name="Cancel").click()
    await page.goto(f"{tab.base_url}#join=no-such-token")
    await expect(dialog.get_by_role("alert")).to_have_text(re.compile("does not exist"))
    await dialog.get_by_role("button", name="Cancel").click()
    tab.errors = [e for e in tab.errors if not re.search(r"status of 4(04|10)", e)]


@on_module_loop
async def test_typing_and_ticks_in_a_group(peers, tab):
    """XEP-0085 in the room ("Bob is typing…"); our message is ✓ until every
    other member's received marker (XEP-0333, via the room) makes it ✓✓ and
    every displayed marker makes it read; the page marks others' messages read."""
    alice, bob, carol = await peers.account("gt"), await peers.account("gu"), await peers.account("gx")
    b = await peers.connect(bob, plugins=PLUGINS)
    c = await peers.connect(carol, plugins=PLUGINS)
    page = tab.page
    await tab.sign_in(alice.jid, alice.password)
    await create_group(tab, "Trio", bob.jid, carol.jid)
    room = (await b.wait_message(is_invitation, what="invitation to bob"))["from"].bare
    await c.wait_message(is_invitation, what="invitation to carol")
    await join(b, room, "Bob")
    await join(c, room, "Carol")

    status = page.locator("#chat-status")
    b.send_raw(f"<message to='{room}' type='groupchat'><composing xmlns='{NS_STATES}'/></message>")
    await expect(status).to_have_text("Bob is typing…")
    await expect(tab.chat_row(re.compile("Trio"))).to_contain_text("Bob is typing…")
    b.send_raw(f"<message to='{room}' type='groupchat'><paused xmlns='{NS_STATES}'/></message>")
    await expect(status).to_have_text("Group")
    # and the page's own typing reaches the room's occupants
    await page.get_by_label("Type a message").fill("thinking")
    await b.wait_for(lambda m: getattr(m, "name", "") == "message" and m["type"] == "groupchat"
                     and m.xml.find(f"{{{NS_STATES}}}composing") is not None, what="composing in the room")

    await tab.send("tick me")
    got_b = await b.wait_message(is_groupchat("tick me"), what="message at bob")
    await c.wait_message(is_groupchat("tick me"), what="message at carol")
    sid = room_stanza_id(got_b, room)
    bubble = tab.bubble("tick me")
    await expect(bubble).to_have_attribute("data-state", "sent")

    def marker(client, kind):
        client.send_raw(f"<message to='{room}' type='groupchat'><{kind} xmlns='{NS_MARKERS}' id='{sid}'/></message>")

    marker(b, "received")
    await asyncio.sleep(0.5)
    await expect(bubble).to_have_attribute("data-state", "sent")  # one of two members: still ✓
    marker(c, "received")
    await expect(bubble).to_have_attribute("data-state", "delivered")
    marker(b, "displayed")
    await expect(bubble.get_by_role("img", name="Delivered, read by 1")).to_be_visible()
    marker(c, "displayed")
    await expect(bubble).to_have_attribute("data-state", "read")
    await expect(bubble.get_by_role("img", name="Read")).to_be_visible()
    # Markers are not in the room's archive: the page keeps them across a reload.
    await page.reload()
    await tab.chat_row(re.compile("Trio")).click()
    await expect(tab.bubble("tick me")).to_have_attribute("data-state", "read", timeout=15000)

    # bob's markable message, seen in the open chat: the page's markers reach bob.
    b.send_raw(f"<message to='{room}' type='groupchat' id='gm1'><body>read me</body>"
               f"<markable xmlns='{NS_MARKERS}'/></message>")
    echo = await b.wait_message(is_groupchat("read me"), what="bob's own echo")
    mine = room_stanza_id(echo, room)
    await expect(tab.bubble("read me")).to_be_visible()
    for kind in ("received", "displayed"):
        got = await b.wait_for(lambda m, k=kind: getattr(m, "name", "") == "message"
                               and m.xml.find(f"{{{NS_MARKERS}}}{k}") is not None, what=f"{kind} marker at bob")
        assert got.xml.find(f"{{{NS_MARKERS}}}{kind}").get("id") == mine
