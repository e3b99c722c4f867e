"""Phone-number accounts over the HTTP API (issue 4): sign-up with an SMS code,
device credentials as XMPP passwords (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN over
TLS), linking a device with a one-time code, revoking devices, abuse limits,
E.164 normalisation, contact discovery with mutual rosters, and the OpenAPI file.

The SMS gateway is a local HTTP receiver: the webhook sender's HMAC signature and
the Twilio-style sender's Basic auth and form fields are checked as sent. XMPP
logins use slixmpp; HTTP calls use the standard library's urllib.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio

from kithtest.api import (Api, SmsGateway, basic_auth, form, national, sign_up, us_number,
                          wait_until)
from kithtest.xmpp import DEFAULT_PLUGINS, LoginFailed, body_of, server_roster

SECRET = "sms-webhook-secret"


@pytest.fixture(scope="module")
def gateway():
    gw = SmsGateway(SECRET)
    yield gw
    gw.close()


def phone_config(gateway: SmsGateway, **phone) -> dict:
    return {
        "sms": {"sender": "webhook", "webhook_url": gateway.url + "/sms", "webhook_secret": SECRET},
        "phone": {"codes_per_ip_per_hour": 1000, "codes_per_number_per_hour": 3,
                  "discover_max_per_request": 20, "discover_max_per_day": 30, **phone},
    }


@pytest.fixture(scope="module")
def phone_server(backend, server_factory, gateway):
    srv = server_factory.start("phone", backend, phone_config(gateway))
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


# ---------------------------------------------------------------------------
# sign-up and login
# ---------------------------------------------------------------------------

async def test_sign_up_by_phone_then_log_in_with_the_credential(api, gateway, clients):
    phone = us_number()
    # A person types the number any way they like; the server keeps E.164.
    started = await api.call("POST", "/register/start", {"phone": "+1 " + national(phone)})
    assert started.status == 200, started
    assert started.body["phone"] == phone and started.body["expires_in"] == 600
    code = gateway.webhook_code(phone)  # the HMAC signature is checked here
    assert len(code) == 6 and code.isdigit()
    done = await api.call("POST", "/register/verify",
                          {"phone": phone, "code": code, "device_name": "Pixel"})
    assert done.status == 200, done
    assert done.body["jid"] == phone[1:] + "@localhost"
    assert done.body["new_account"] is True
    credential = done.body["credential"]
    assert credential.startswith("kd_")

    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        c = await clients.connect(done.body["jid"], credential, mech=mech, label=mech)
        assert c.boundjid.bare == done.body["jid"]
        await c.close()

    # The code was used up.
    again = await api.call("POST", "/register/verify",
                           {"phone": phone, "code": code, "device_name": "Pixel"})
    assert again.status == 400 and again.error == "invalid_code"
    # Wrong credentials don't log in (one character changed: 1 in 62 credentials
    # already ends in "x").
    wrong = credential[:-1] + ("y" if credential.endswith("x") else "x")
    with pytest.raises(LoginFailed):
        await clients.connect(done.body["jid"], wrong, mech="SCRAM-SHA-256")

    # Signing in again on a new device: same account, a second credential.
    second = await sign_up(api, gateway, phone, "Tablet")
    assert second["new_account"] is False and second["jid"] == done.body["jid"]
    listed = await api.call("GET", "/devices", token=second["credential"])
    assert listed.status == 200
    assert [(d["name"], d["current"]) for d in listed.body["devices"]] == [("Pixel", False), ("Tablet", True)]


async def test_start_answers_alike_for_registered_and_new_numbers(api, gateway):
    registered = us_number()
    await sign_up(api, gateway, registered)
    fresh = us_number()
    a = await api.call("POST", "/register/start", {"phone": registered})
    b = await api.call("POST", "/register/start", {"phone": fresh})
    assert a.status == b.status == 200
    assert {k: v for k, v in a.body.items() if k != "phone"} == {k: v for k, v in b.body.items() if k != "phone"}


async def test_numbers_are_normalised_and_invalid_ones_refused(api):
    for typed, e164 in [("+44 20 7946 0958", "+442079460958"), ("0044 20 7946 0958", "+442079460958"),
                        ("+1.201.555.0142", "+12015550142"), ("+49 30 901820", "+4930901820")]:
        r = await api.call("POST", "/register/start", {"phone": typed})
        assert r.status == 200 and r.body["phone"] == e164, (typed, r)
    for bad in ["hello", "+1 555 123 4567", "12345", "(201) 555-0123", "+999 123", ""]:
        r = await api.call("POST", "/register/start", {"phone": bad})
        assert r.status == 400 and r.error == "invalid_phone", (bad, r)
        assert r.body["message"]


async def test_bad_requests_get_clear_errors(api, gateway):
    r = await api.call("POST", "/register/start", raw=b"{not json")
    assert r.status == 400 and r.error == "invalid_json"
    r = await api.call("POST", "/register/start", {"number": "+12015550142"})
    assert r.status == 400 and r.error == "invalid_json"
    r = await api.call("POST", "/register/start", raw=b'{"phone": "' + b"1" * 70_000 + b'"}')
    assert r.status == 413 and r.error == "body_too_large"
    r = await api.call("GET", "/devices", token="kd_nonsense")
    assert r.status == 401 and r.error == "unauthorized" and "www-authenticate" in r.headers
    r = await api.call("GET", "/no/such/thing")
    assert r.status == 404 and r.error == "no_such_endpoint"
    # A code for another number is just a wrong code.
    a, b = us_number(), us_number()
    await api.call("POST", "/register/start", {"phone": a})
    code = gateway.webhook_code(a)
    r = await api.call("POST", "/register/verify", {"phone": b, "code": code, "device_name": "x"})
    assert r.status == 400 and r.error == "invalid_code"
    r = await api.call("POST", "/register/verify", {"phone": a, "code": code, "device_name": "\u0000"})
    assert r.status == 400 and r.error == "invalid_device_name"


# ---------------------------------------------------------------------------
# abuse protection
# ---------------------------------------------------------------------------

async def test_sixth_wrong_code_is_refused_and_the_number_cools_down(api, gateway):
    phone = us_number()
    await api.call("POST", "/register/start", {"phone": phone})
    code = gateway.webhook_code(phone)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for left in (4, 3, 2, 1):
        r = await api.call("POST", "/register/verify", {"phone": phone, "code": wrong, "device_name": "x"})
        assert r.status == 400 and r.error == "invalid_code" and r.body["attempts_left"] == left, r
    r = await api.call("POST", "/register/verify", {"phone": phone, "code": wrong, "device_name": "x"})
    assert r.status == 429 and r.error == "too_many_attempts" and int(r.headers["retry-after"]) > 0
    # The 6th try fails even with the right code, and no new code is sent meanwhile.
    r = await api.call("POST", "/register/verify", {"phone": phone, "code": code, "device_name": "x"})
    assert r.status == 429 and r.error == "too_many_attempts"
    sent = gateway.sent_to(phone)
    r = await api.call("POST", "/register/start", {"phone": phone})
    assert r.status == 429 and int(r.headers["retry-after"]) > 0
    assert gateway.sent_to(phone) == sent


async def test_codes_per_number_are_rate_limited(api, gateway):
    phone = us_number()
    for _ in range(3):
        r = await api.call("POST", "/register/start", {"phone": phone})
        assert r.status == 200, r
    r = await api.call("POST", "/register/start", {"phone": phone})
    assert r.status == 429 and r.error == "rate_limited"
    assert 0 < int(r.headers["retry-after"]) <= 3600
    assert gateway.sent_to(phone) == 3


async def test_codes_per_ip_are_rate_limited(backend, server_factory, gateway):
    srv = server_factory.start("phone-ip", backend, phone_config(gateway, codes_per_ip_per_hour=2))
    try:
        api = Api(srv)
        for _ in range(2):
            assert (await api.call("POST", "/register/start", {"phone": us_number()})).status == 200
        r = await api.call("POST", "/register/start", {"phone": us_number()})
        assert r.status == 429 and r.error == "rate_limited" and "retry-after" in r.headers
    finally:
        server_factory.stop(srv)


async def test_expired_code_is_refused(backend, server_factory, gateway):
    srv = server_factory.start("phone-ttl", backend, phone_config(gateway, code_ttl_secs=1))
    try:
        api = Api(srv)
        phone = us_number()
        assert (await api.call("POST", "/register/start", {"phone": phone})).status == 200
        code = gateway.webhook_code(phone)
        await asyncio.sleep(1.5)
        r = await api.call("POST", "/register/verify", {"phone": phone, "code": code, "device_name": "x"})
        assert r.status == 400 and r.error == "code_expired"
    finally:
        server_factory.stop(srv)


# ---------------------------------------------------------------------------
# SMS providers
# ---------------------------------------------------------------------------

async def test_twilio_style_sender(backend, server_factory, gateway):
    srv = server_factory.start("phone-twilio", backend, {
        "sms": {"sender": "twilio", "twilio_account_sid": "ACtest123", "twilio_auth_token": "tok-en",
                "twilio_from": "+15005550006", "twilio_base_url": gateway.url},
    })
    try:
        api = Api(srv)
        phone = us_number()
        assert (await api.call("POST", "/register/start", {"phone": phone})).status == 200
        with gateway.lock:
            sent = [r for r in gateway.requests if r["path"] == "/2010-04-01/Accounts/ACtest123/Messages.json"]
        assert sent, "no request to the Messages API"
        request = sent[-1]
        assert basic_auth(request["headers"]["authorization"]) == ("ACtest123", "tok-en")
        assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
        fields = form(request["body"])
        assert fields["To"] == phone and fields["From"] == "+15005550006"
        code = fields["Body"].rsplit(" ", 1)[-1]
        r = await api.call("POST", "/register/verify", {"phone": phone, "code": code, "device_name": "x"})
        assert r.status == 200 and r.body["credential"]
        # A gateway failure is reported, not swallowed.
        gateway.status = 500
        r = await api.call("POST", "/register/start", {"phone": us_number()})
        assert r.status == 502 and r.error == "sms_failed"
    finally:
        gateway.status = 200
        server_factory.stop(srv)


# ---------------------------------------------------------------------------
# devices: linking, inbox-log cursors, revoking
# ---------------------------------------------------------------------------

async def link_device(api: Api, approver_credential: str, name: str) -> dict:
    started = await api.call("POST", "/link/start", {"device_name": name})
    assert started.status == 201, started
    body = started.body
    assert "<svg" in body["qr_svg"] and len(body["code"]) == 9
    poll = {"link_id": body["link_id"], "poll_token": body["poll_token"]}
    pending = await api.call("POST", "/link/poll", poll)
    assert pending.status == 200 and pending.body == {"status": "pending"}
    stolen = await api.call("POST", "/link/poll", {**poll, "poll_token": "x" * 32})
    assert stolen.status == 404
    approved = await api.call("POST", "/link/approve", {"code": body["code"].lower()},
                              token=approver_credential)
    assert approved.status == 200 and approved.body["device_name"] == name
    replay = await api.call("POST", "/link/approve", {"code": body["code"]}, token=approver_credential)
    assert replay.status == 404 and replay.error == "link_not_found"
    linked = await api.call("POST", "/link/poll", poll)
    assert linked.status == 200 and linked.body["status"] == "approved", linked
    again = await api.call("POST", "/link/poll", poll)
    assert again.status == 404 and again.error == "link_not_found"
    return linked.body


async def test_linked_device_has_its_own_credential_and_cursor(api, gateway, clients, phone_server):
    first = await sign_up(api, gateway, us_number(), "Phone")
    linked = await link_device(api, first["credential"], "Laptop")
    assert linked["jid"] == first["jid"] and linked["credential"] != first["credential"]
    unauth = await api.call("POST", "/link/approve", {"code": "ABCD-EFGH"})
    assert unauth.status == 401

    # Both devices log in once (they become inbox-log devices), under the SAME
    # resource name, one after the other: the cursor belongs to the credential.
    for credential in (first["credential"], linked["credential"]):
        c = await clients.connect(first["jid"], credential, resource="same")
        await c.close()

    sender = await clients.connect(await clients.account("sender"))
    for text in ("one", "two"):
        sender.send_message(mto=first["jid"], mbody=text, mtype="chat")
    await asyncio.sleep(0.5)

    for credential in (first["credential"], linked["credential"]):
        c = await clients.connect(first["jid"], credential, resource="same")
        for text in ("one", "two"):
            await c.wait_message(lambda m, t=text: body_of(m) == t, what=f"offline message {text!r}")
        await c.close()


async def test_revoking_a_device_cuts_it_off(api, gateway, clients):
    phone = us_number()
    keep = await sign_up(api, gateway, phone, "Keep")
    drop = await sign_up(api, gateway, phone, "Drop")
    kept = await clients.connect(keep["jid"], keep["credential"], label="kept")
    dropped = await clients.connect(drop["jid"], drop["credential"], label="dropped")

    r = await api.call("DELETE", f"/devices/{drop['device_id']}", token=keep["credential"])
    assert r.status == 204, r
    await wait_until(lambda: not dropped.connected_now, what="revoked session closed")
    assert any(e["condition"] == "not-authorized" for e in dropped.stream_errors), dropped.events

    with pytest.raises(LoginFailed):
        await clients.connect(drop["jid"], drop["credential"], label="revoked login")
    r = await api.call("GET", "/devices", token=drop["credential"])
    assert r.status == 401
    r = await api.call("DELETE", f"/devices/{drop['device_id']}", token=keep["credential"])
    assert r.status == 404 and r.error == "device_not_found"

    # The other device is untouched.
    assert kept.connected_now
    sender = await clients.connect(await clients.account("sender"))
    sender.send_message(mto=keep["jid"], mbody="still here", mtype="chat")
    await kept.wait_message(lambda m: body_of(m) == "still here")
    r = await api.call("GET", "/devices", token=keep["credential"])
    assert [d["name"] for d in r.body["devices"]] == ["Keep"]

    # Another account can't revoke this one's devices.
    other = await sign_up(api, gateway, us_number(), "Other")
    r = await api.call("DELETE", f"/devices/{keep['device_id']}", token=other["credential"])
    assert r.status == 404


async def test_revoking_ends_a_session_waiting_to_resume(api, gateway, clients, phone_server):
    phone = us_number()
    keep = await sign_up(api, gateway, phone, "Keep")
    drop = await sign_up(api, gateway, phone, "Drop")
    c = await clients.connect(drop["jid"], drop["credential"], plugins=DEFAULT_PLUGINS + ("xep_0198",))
    await wait_until(lambda: c.plugin["xep_0198"].sm_id, what="stream management enabled")
    c.abort()  # the connection drops; the session waits to be resumed (XEP-0198)
    await asyncio.sleep(0.5)  # the server notices the drop
    r = await api.call("DELETE", f"/devices/{drop['device_id']}", token=keep["credential"])
    assert r.status == 204
    # The revocation found the waiting session and ended it.
    log = phone_server.log_path.read_text(errors="replace")
    line = next(l for l in log.splitlines() if "device revoked" in l and drop["device_id"] in l)
    assert "sessions=1" in line, line
    await wait_until(lambda: "credential revoked; ending the session" in
                     phone_server.log_path.read_text(errors="replace"), what="session ended")


# ---------------------------------------------------------------------------
# contact discovery
# ---------------------------------------------------------------------------

async def test_discovery_finds_contacts_and_mutual_ones_become_friends(api, gateway, clients):
    a_phone, b_phone, nobody = us_number(), us_number(), us_number()
    a = await sign_up(api, gateway, a_phone)
    b = await sign_up(api, gateway, b_phone)
    ca = await clients.connect(a["jid"], a["credential"], label="a")
    cb = await clients.connect(b["jid"], b["credential"], label="b")

    # National format is read in the caller's country (+1 here).
    r = await api.call("POST", "/contacts/discover",
                       {"phones": [national(b_phone), nobody, "not a number"]}, token=a["credential"])
    assert r.status == 200, r
    assert r.body["contacts"] == [{"phone": national(b_phone), "e164": b_phone, "jid": b["jid"]}]
    assert r.body["invalid"] == ["not a number"]
    # Only A has B's number: no roster change yet.
    await asyncio.sleep(0.3)
    assert b["jid"] not in await server_roster(ca)

    r = await api.call("POST", "/contacts/discover", {"phones": [a_phone]}, token=b["credential"])
    assert r.status == 200 and r.body["contacts"][0]["jid"] == a["jid"]
    # Now both have each other's number: contacts with subscription both, pushed.
    for client, other in ((ca, b["jid"]), (cb, a["jid"])):
        await client.wait_iq(
            lambda iq, o=other: iq["type"] == "set" and any(
                item.get("jid") == o and item.get("subscription") == "both"
                for item in iq.xml.iter("{jabber:iq:roster}item")),
            what=f"roster push of {other}")
        assert (await server_roster(client))[other]["subscription"] == "both"
    # And each sees the other online.
    await ca.wait_presence(lambda p: p["from"].bare == b["jid"] and p["type"] == "available")


async def test_discovery_adds_a_pair_whole_or_not_at_all(backend, server_factory, gateway):
    """When one side's roster is full, neither keeps the other: no one-sided
    'both' that would never see presence."""
    config = phone_config(gateway)
    config["limits"] = {"max_roster_items": 1}
    srv = server_factory.start("phonecap", backend, config)
    from kithtest.xmpp import ClientPool
    pool = ClientPool(srv)
    try:
        api = Api(srv)
        a_phone, b_phone = us_number(), us_number()
        a = await sign_up(api, gateway, a_phone)
        b = await sign_up(api, gateway, b_phone)
        c = await sign_up(api, gateway, us_number())
        ca = await pool.connect(a["jid"], a["credential"], label="a")
        cb = await pool.connect(b["jid"], b["credential"], label="b")
        await cb.update_roster(c["jid"], name="the only one", timeout=10)  # b is full now
        r = await api.call("POST", "/contacts/discover", {"phones": [a_phone]}, token=b["credential"])
        assert r.status == 200, r
        r = await api.call("POST", "/contacts/discover", {"phones": [b_phone]}, token=a["credential"])
        assert r.status == 200, r
        assert r.body["contacts"][0]["jid"] == b["jid"], r
        # a's side was written first, then taken back when b's had no room.
        await ca.wait_iq(lambda iq: iq["type"] == "set" and any(
            item.get("jid") == b["jid"] and item.get("subscription") == "remove"
            for item in iq.xml.iter("{jabber:iq:roster}item")), what="the half-made pair taken back")
        assert b["jid"] not in await server_roster(ca)
        assert set(await server_roster(cb)) == {c["jid"]}
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_discovery_limits(api, gateway):
    me = await sign_up(api, gateway, us_number())
    r = await api.call("POST", "/contacts/discover", {"phones": [us_number() for _ in range(21)]},
                       token=me["credential"])
    assert r.status == 400 and r.error == "too_many_numbers"
    r = await api.call("POST", "/contacts/discover", {"phones": [us_number() for _ in range(20)]},
                       token=me["credential"])
    assert r.status == 200
    r = await api.call("POST", "/contacts/discover", {"phones": [us_number() for _ in range(11)]},
                       token=me["credential"])
    assert r.status == 429 and r.error == "daily_limit" and int(r.headers["retry-after"]) > 0
    r = await api.call("POST", "/contacts/discover", {"phones": []})
    assert r.status == 401


# ---------------------------------------------------------------------------
# the OpenAPI document
# ---------------------------------------------------------------------------

async def test_openapi_is_served_and_covers_the_routes(api):
    r = await api.call("GET", "/openapi.json")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    spec = json.loads(r.raw)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert {"/register/start", "/register/verify", "/devices", "/devices/{id}", "/link/start",
            "/link/approve", "/link/poll", "/contacts/discover"} <= set(paths)
    # Every documented operation exists on the server (not the API's 404).
    for path, operations in paths.items():
        for method in operations:
            if method == "parameters":
                continue
            reply = await api.call(method.upper(), path.replace("{id}", "x"),
                                   {} if method == "post" else None)
            assert reply.error != "no_such_endpoint", (method, path, reply)


# ---------------------------------------------------------------------------
# the operator's CLI
# ---------------------------------------------------------------------------

async def test_cli_lists_and_revokes_devices(api, gateway, clients, phone_server):
    phone = us_number()
    device = await sign_up(api, gateway, phone, "Old phone")
    username = phone[1:]
    out = phone_server.cli("device", "list", username).stdout
    assert device["device_id"] in out and "Old phone" in out
    # Revoked from the CLI while the device is connected: the running server
    # ends its session at once (through its admin socket).
    online = await clients.connect(device["jid"], device["credential"], label="revoked by the CLI")
    out = phone_server.cli("device", "revoke", username, device["device_id"]).stdout
    assert "ended 1 session" in out, out
    await wait_until(lambda: not online.connected_now, what="session of a device revoked from the CLI closed")
    assert any(e["condition"] == "not-authorized" for e in online.stream_errors), online.events
    assert device["device_id"] not in phone_server.cli("device", "list", username).stdout
    with pytest.raises(LoginFailed):
        await clients.connect(device["jid"], device["credential"], mech="SCRAM-SHA-256")
    assert phone_server.cli("device", "revoke", username, device["device_id"], check=False).returncode != 0


async def test_only_the_same_device_resumes_its_session(api, gateway, clients):
    phone = us_number()
    one = await sign_up(api, gateway, phone, "One")
    two = await sign_up(api, gateway, phone, "Two")
    sm_plugins = DEFAULT_PLUGINS + ("xep_0198",)
    c = await clients.connect(one["jid"], one["credential"], plugins=sm_plugins, label="one")
    await wait_until(lambda: c.plugin["xep_0198"].sm_id, what="stream management enabled")
    sm_id = c.plugin["xep_0198"].sm_id
    c.transport.abort()
    await asyncio.sleep(0.5)

    # Device two, same account, presents device one's stream id: refused (XEP-0198
    # <failed/>), and it binds a session of its own instead.
    other = clients.make(two["jid"], two["credential"], plugins=sm_plugins, label="two")
    other.plugin["xep_0198"].sm_id = sm_id
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()
    other.add_event_handler("session_resumed", lambda _e: outcome.done() or outcome.set_result("resumed"))
    other.add_event_handler("session_start", lambda _e: outcome.done() or outcome.set_result("bound"))
    clients.start(other)
    assert await asyncio.wait_for(outcome, 15) == "bound"

    # Device one itself resumes.
    resumed = loop.create_future()
    c.add_event_handler("session_resumed", lambda _e: resumed.done() or resumed.set_result(True))
    clients.start(c)
    await asyncio.wait_for(resumed, 15)


# ---------------------------------------------------------------------------
# living with XEP-0077
# ---------------------------------------------------------------------------

async def test_password_change_keeps_device_credentials_working(api, gateway, clients):
    one = await sign_up(api, gateway, us_number(), "One")
    two = await sign_up(api, gateway, "+" + one["jid"].split("@")[0], "Two")
    c = await clients.connect(one["jid"], one["credential"],
                              plugins=DEFAULT_PLUGINS + ("xep_0077",))
    password = "a new password"
    await c.plugin["xep_0077"].change_password(password, timeout=10)
    await c.close()
    for secret in (one["credential"], two["credential"], password):
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
            login = await clients.connect(one["jid"], secret, mech=mech, roster=False, presence=False)
            await login.close()


async def test_in_band_registration_cannot_take_a_phone_name(phone_server):
    from test_xep0077_register import raw_error_condition, raw_register
    iq = await raw_register(phone_server, us_number()[1:], "pw-secret")
    assert iq.get("type") == "error" and raw_error_condition(iq) == "not-acceptable"


async def test_console_sender_prints_the_code_in_the_server_log(server, xmpp):
    """The zero-config server: the code shows in the log, as a developer sees it."""
    import re
    api = Api(server)
    phone = us_number()
    r = await api.call("POST", "/register/start", {"phone": phone})
    assert r.status == 200
    pattern = re.compile(rf"SMS code \(console sender\) phone={re.escape(phone)} code=(\d{{6}})")
    match = await wait_until(lambda: pattern.search(server.log_path.read_text(errors="replace")),
                             what="code in the server log")
    r = await api.call("POST", "/register/verify",
                       {"phone": phone, "code": match.group(1), "device_name": "dev"})
    assert r.status == 200 and r.body["new_account"] is True
    c = await xmpp.connect(r.body["jid"], r.body["credential"])
    assert c.boundjid.bare == r.body["jid"]


async def test_deleted_phone_account_starts_clean(api, gateway, clients):
    phone = us_number()
    old = await sign_up(api, gateway, phone, "Old")
    c = await clients.connect(old["jid"], old["credential"], plugins=DEFAULT_PLUGINS + ("xep_0077",))
    await c.plugin["xep_0077"].cancel_registration(timeout=10)
    await c.wait_closed()
    new = await sign_up(api, gateway, phone, "New")
    assert new["new_account"] is True and new["jid"] == old["jid"]
    assert (await api.call("GET", "/devices", token=old["credential"])).status == 401
    listed = await api.call("GET", "/devices", token=new["credential"])
    assert [d["name"] for d in listed.body["devices"]] == ["New"]
    with pytest.raises(LoginFailed):
        await clients.connect(old["jid"], old["credential"], mech="SCRAM-SHA-256")
