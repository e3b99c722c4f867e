"""Email sign-up and the sign-up methods switch (issue 4, part D): the code
arrives by SMTP in a local sink (aiosmtpd), is exchanged for an account and a
device credential, and the account logs in over XMPP (slixmpp) with either the
credential or its password. Disabled methods are refused and not advertised,
over HTTP and over XEP-0077."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio

from kithtest.api import Api
from kithtest.raw import NS_CLIENT, RawStream
from kithtest.signup import SmtpSink
from kithtest.xmpp import ClientPool, LoginFailed

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture(scope="module")
def smtp():
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def email_server(backend, server_factory, smtp):
    srv = server_factory.start("email", backend, {
        "registration": {"methods": ["email", "password"]},
        "smtp": smtp.config(),
        "phone": {"codes_per_number_per_hour": 3, "codes_per_ip_per_hour": 1000},
    })
    yield srv
    server_factory.stop(srv)


@pytest.fixture
def api(email_server):
    return Api(email_server)


@pytest_asyncio.fixture
async def clients(email_server):
    pool = ClientPool(email_server)
    yield pool
    await pool.close_all()


def address(prefix: str = "u") -> str:
    return f"{prefix}.{secrets.token_hex(4)}@Example.ORG"


def username(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def test_email_sign_up_end_to_end(api, smtp, clients):
    mail = address("alice")
    started = await api.call("POST", "/register/email/start", {"email": mail})
    assert started.status == 200, started
    assert started.body["status"] == "code_sent"
    # The domain is normalised to lower case; the mail went there.
    assert started.body["email"] == mail.split("@")[0] + "@example.org"
    code = smtp.code_for(started.body["email"])
    sent = smtp.mails_to(started.body["email"])[-1]
    assert sent.sender == "noreply@localhost"
    assert code in sent.subject

    name = username("alice")
    verified = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": code, "username": name, "device_name": "Laptop",
        "password": "correct horse battery",
    })
    assert verified.status == 200, verified
    assert verified.body["jid"] == f"{name}@localhost"
    assert verified.body["new_account"] is True
    assert verified.body["credential"].startswith("kd_")

    # The device credential is an XMPP password (SCRAM), and so is the chosen one.
    c = await clients.connect(verified.body["jid"], verified.body["credential"])
    assert c.boundjid.bare == verified.body["jid"]
    p = await clients.connect(verified.body["jid"], "correct horse battery")
    assert p.boundjid.bare == verified.body["jid"]
    # The credential is also the API's bearer token.
    devices = await api.call("GET", "/devices", token=verified.body["credential"])
    assert devices.status == 200, devices
    assert [d["name"] for d in devices.body["devices"]] == ["Laptop"]

    # The code was single-use.
    again = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": code, "username": username(), "device_name": "x"})
    assert again.status == 400 and again.error == "invalid_code", again


async def test_email_sign_up_refuses_wrong_codes_and_taken_names(api, smtp, clients):
    taken = await clients.account("taken")
    mail = address("bob")
    assert (await api.call("POST", "/register/email/start", {"email": mail})).status == 200
    code = smtp.code_for(mail.lower())
    wrong = "000000" if code != "000000" else "111111"
    bad = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": wrong, "username": username(), "device_name": "x"})
    assert bad.status == 400 and bad.error == "invalid_code", bad
    assert bad.body["attempts_left"] == 4
    # A taken username is refused before the code is used up.
    clash = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": code, "username": taken.name, "device_name": "x"})
    assert clash.status == 409 and clash.error == "username_taken", clash
    digits = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": code, "username": "15551234567", "device_name": "x"})
    assert digits.status == 400 and digits.error == "invalid_username", digits
    ok = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": code, "username": username("bob"), "device_name": "x"})
    assert ok.status == 200, ok


async def test_email_codes_lock_out_after_five_wrong_tries(api, smtp):
    mail = address("carol")
    assert (await api.call("POST", "/register/email/start", {"email": mail})).status == 200
    code = smtp.code_for(mail.lower())
    wrong = "000000" if code != "000000" else "111111"
    statuses = []
    for _ in range(5):
        reply = await api.call("POST", "/register/email/verify", {
            "email": mail, "code": wrong, "username": username(), "device_name": "x"})
        statuses.append((reply.status, reply.error))
    assert statuses[-1] == (429, "too_many_attempts"), statuses
    # Even the right code is refused now, and no account was made.
    name = username("carol")
    late = await api.call("POST", "/register/email/verify", {
        "email": mail, "code": code, "username": name, "device_name": "x"})
    assert late.status == 429, late


async def test_email_bad_input(api, smtp, email_server):
    for bad in ("", "alice", "alice@", "@example.org", "a b@example.org", "x" * 300 + "@e.org"):
        reply = await api.call("POST", "/register/email/start", {"email": bad})
        assert reply.status == 400 and reply.error == "invalid_email", (bad, reply)
    malformed = await api.call("POST", "/register/email/start", raw=b"{not json")
    assert malformed.status == 400 and malformed.error == "invalid_json", malformed
    unknown_field = await api.call("POST", "/register/email/start", {"email": "a@b.org", "x": 1})
    assert unknown_field.status == 400 and unknown_field.error == "invalid_json", unknown_field
    # Per-address limit: 3 codes an hour.
    mail = address("dave")
    replies = [await api.call("POST", "/register/email/start", {"email": mail}) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429], replies
    assert int(replies[-1].headers["retry-after"]) >= 1
    assert len(smtp.mails_to(mail.lower())) == 3


async def test_methods_are_advertised_and_phone_is_refused_when_disabled(api):
    methods = await api.call("GET", "/register/methods")
    assert methods.status == 200
    assert methods.body["methods"] == ["password", "email"]
    refused = await api.call("POST", "/register/start", {"phone": "+15555550100"})
    assert refused.status == 403 and refused.error == "signup_method_disabled", refused


async def test_default_methods_and_disabled_email(server, smtp):
    """The zero-config server allows phone and password sign-up, not email."""
    api = Api(server)
    methods = await api.call("GET", "/register/methods")
    assert methods.body["methods"] == ["phone", "password"]
    refused = await api.call("POST", "/register/email/start", {"email": "a@example.org"})
    assert refused.status == 403 and refused.error == "signup_method_disabled", refused
    assert smtp.mails_to("a@example.org") == []


async def test_password_sign_up_disabled_is_not_advertised_and_refused(backend, server_factory):
    """`methods` without "password": XEP-0077 is neither advertised nor allowed."""
    srv = server_factory.start("phoneonly", backend, {"registration": {"methods": ["phone"], "enabled": False}})
    pool = ClientPool(srv)
    try:
        assert (await Api(srv).call("GET", "/register/methods")).body["methods"] == ["phone"]
        s = await RawStream.connect(srv)
        try:
            features = await s.secure()
            assert features.find("{http://jabber.org/features/iq-register}register") is None
            name = username("closed")
            await s.send(f"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
                         f"<username>{name}</username><password>secret-pw</password></query></iq>")
            iq = await s.expect(f"{{{NS_CLIENT}}}iq", 15)
        finally:
            s.close()
        assert iq.get("type") == "error"
        assert iq.find(f"{{{NS_CLIENT}}}error/{{{NS_STANZAS}}}not-allowed") is not None, \
            ET.tostring(iq, encoding="unicode")
        with pytest.raises(LoginFailed):
            await pool.connect(f"{name}@{srv.domain}", "secret-pw", roster=False, presence=False)
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_smtp_failures_are_a_502_and_starttls_is_not_downgraded(backend, server_factory,
                                                                     smtp):
    """A relay without STARTTLS when `starttls = true` gets no mail (no plain-text
    fallback); the client is told the code could not be sent."""
    srv = server_factory.start("smtptls", backend, {
        "registration": {"methods": ["email", "password"]},
        "smtp": {**smtp.config(), "starttls": True, "timeout_secs": 5},
    })
    try:
        mail = address("tls")
        reply = await Api(srv).call("POST", "/register/email/start", {"email": mail})
        assert reply.status == 502 and reply.error == "email_failed", reply
        assert smtp.mails_to(mail.lower()) == []
    finally:
        server_factory.stop(srv)
