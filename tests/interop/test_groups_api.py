"""Groups over HTTP (issue 5): `POST /api/v1/groups` makes a XEP-0045 group whose
members talk over XMPP (slixmpp); invite links are created, shown (an HTML page
and a QR code), redeemed with `POST /api/v1/join/{token}` and revoked; only
admins make links; bad input gets JSON 4xx errors. Accounts are phone accounts
(code from the webhook SMS sender) so they hold device credentials."""

from __future__ import annotations

import pytest
import pytest_asyncio

from kithtest.api import Api, SmsGateway, sign_up, us_number
from kithtest.muc import PLUGINS, is_groupchat, join
from kithtest.signup import get_page
from kithtest.xmpp import error_condition

SECRET = "sms-webhook-secret"


@pytest.fixture(scope="module")
def gateway():
    gw = SmsGateway(SECRET)
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def groups_server(backend, server_factory, gateway):
    srv = server_factory.start("groupsapi", backend, {
        "sms": {"sender": "webhook", "webhook_url": gateway.url + "/sms", "webhook_secret": SECRET},
        "phone": {"codes_per_ip_per_hour": 1000},
    })
    yield srv
    server_factory.stop(srv)


@pytest.fixture
def api(groups_server):
    return Api(groups_server)


@pytest_asyncio.fixture
async def clients(groups_server):
    from kithtest.xmpp import ClientPool
    pool = ClientPool(groups_server)
    yield pool
    await pool.close_all()


async def user(api, gateway, clients, name: str):
    """A phone account with a device credential, logged in over XMPP."""
    account = await sign_up(api, gateway, us_number(), device=name)
    client = await clients.connect(account["jid"], account["credential"], plugins=PLUGINS)
    return account, client


async def test_group_made_over_http_carries_messages_and_invite_links_work(api, gateway, clients,
                                                                           groups_server):
    (alice, a), (bob, b), (carol, c) = [await user(api, gateway, clients, n)
                                        for n in ("alice", "bob", "carol")]
    made = await api.call("POST", "/groups", {"name": "Hiking <club>",
                                              "members": [bob["jid"], carol["jid"]]},
                          token=alice["credential"])
    assert made.status == 201, made
    room = made.body["jid"]
    assert room.endswith("@conference.localhost")
    for client, nick in ((a, "alice"), (b, "bob"), (c, "carol")):
        await join(client, room, nick)
    clients_by_nick = {"alice": a, "bob": b, "carol": c}
    for nick, sender in clients_by_nick.items():
        text = f"hello from {nick}"
        sender.send_message(mto=room, mbody=text, mtype="groupchat")
        for receiver in clients_by_nick.values():
            got = await receiver.wait_message(is_groupchat(text), what=text)
            assert got["from"].resource == nick

    # Bob is a member, not an admin: no links for him.
    denied = await api.call("POST", f"/groups/{room}/invite-links", token=bob["credential"])
    assert denied.status == 403 and denied.error == "forbidden", denied

    link = await api.call("POST", f"/groups/{room}/invite-links", token=alice["credential"])
    assert link.status == 201, link
    token = link.body["token"]
    assert link.body["url"] == f"https://localhost/join/{token}"

    # The page a shared link opens: the group's name (escaped), a strict CSP.
    base = f"http://{groups_server.host}:{groups_server.http_port}"
    page = get_page(f"{base}/join/{token}")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Hiking &lt;club&gt;" in page.text and "<club>" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    qr = get_page(f"{base}/api/v1/groups/{room}/invite-links/{token}/qr")
    assert qr.status == 200 and qr.headers["content-type"] == "image/svg+xml"
    assert qr.text.lstrip().startswith("<?xml") or "<svg" in qr.text

    # What the link opens, before joining (no credential: the token is the secret).
    preview = await api.call("GET", f"/join/{token}")
    assert preview.status == 200 and preview.body == {"jid": room, "name": "Hiking <club>"}, preview

    # Dave opens the link and joins; he gets the group's messages.
    dave, d = await user(api, gateway, clients, "dave")
    joined = await api.call("POST", f"/join/{token}", token=dave["credential"])
    assert joined.status == 200 and joined.body["jid"] == room, joined
    await join(d, room, "dave")
    a.send_message(mto=room, mbody="welcome dave", mtype="groupchat")
    got = await d.wait_message(is_groupchat("welcome dave"), what="message to the new member")
    assert got["from"].resource == "alice"

    # Revoked: the link admits nobody, its page says so.
    revoked = await api.call("DELETE", f"/groups/{room}/invite-links/{token}",
                             token=alice["credential"])
    assert revoked.status == 204, revoked
    erin, e = await user(api, gateway, clients, "erin")
    late = await api.call("POST", f"/join/{token}", token=erin["credential"])
    assert late.status == 410 and late.error == "gone", late
    assert get_page(f"{base}/join/{token}").status == 410
    gone = await api.call("GET", f"/join/{token}")
    assert gone.status == 410 and gone.error == "gone", gone
    assert get_page(f"{base}/api/v1/groups/{room}/invite-links/{token}/qr").status == 404
    members = await a.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
    assert erin["jid"] not in [str(m) for m in members]
    assert dave["jid"] in [str(m) for m in members]
    # Bob can't revoke either.
    other = await api.call("POST", f"/groups/{room}/invite-links", token=alice["credential"])
    no = await api.call("DELETE", f"/groups/{room}/invite-links/{other.body['token']}",
                        token=bob["credential"])
    assert no.status == 403, no


async def test_announcement_group_lets_only_admins_speak(api, gateway, clients):
    (alice, a), (bob, b) = [await user(api, gateway, clients, n) for n in ("ann-a", "ann-b")]
    made = await api.call("POST", "/groups", {"name": "News", "members": [bob["jid"]],
                                              "announcement": True}, token=alice["credential"])
    assert made.status == 201 and made.body["announcement"] is True, made
    room = made.body["jid"]
    await join(a, room, "alice")
    await join(b, room, "bob")
    a.send_message(mto=room, mbody="announcement 1", mtype="groupchat")
    await b.wait_message(is_groupchat("announcement 1"), what="announcement")
    b.send_raw(f"<message to='{room}' type='groupchat' id='ann1'><body>may I?</body></message>")
    refusal = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "ann1",
                                   what="refusal")
    assert error_condition(refusal) == "forbidden"


async def test_groups_api_bad_input(api, gateway, clients, groups_server):
    alice, _ = await user(api, gateway, clients, "bad-a")
    token = alice["credential"]
    assert (await api.call("POST", "/groups", {"name": "x"})).status == 401
    malformed = await api.call("POST", "/groups", raw=b"{oops", token=token)
    assert malformed.status == 400 and malformed.error == "invalid_json", malformed
    for body, code in (({"name": ""}, "invalid_name"), ({"name": "x" * 101}, "invalid_name"),
                       ({"name": "ok", "members": ["not a jid@@"]}, "invalid_jid"),
                       ({"members": []}, "invalid_json")):
        reply = await api.call("POST", "/groups", body, token=token)
        assert reply.status == 400 and reply.error == code, (body, reply)
    unknown = await api.call("POST", "/groups/nosuchgroup@conference.localhost/invite-links",
                             token=token)
    assert unknown.status == 404 and unknown.error == "not_found", unknown
    bad_jid = await api.call("POST", "/groups/notajid/invite-links", token=token)
    assert bad_jid.status == 400, bad_jid
    nope = await api.call("POST", "/join/nosuchtoken", token=token)
    assert nope.status == 404 and nope.error == "not_found", nope
    assert (await api.call("POST", "/join/nosuchtoken")).status == 401
    unknown_link = await api.call("GET", "/join/nosuchtoken")
    assert unknown_link.status == 404 and unknown_link.error == "not_found", unknown_link
    base = f"http://{groups_server.host}:{groups_server.http_port}"
    assert get_page(f"{base}/join/nosuchtoken").status == 404
