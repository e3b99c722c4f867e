"""XEP-0077: In-Band Registration (sign-up from a standard XMPP client)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from kithtest.raw import NS_CLIENT, RawStream
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool, LoginFailed, iq_error_condition, unique_name, unique_password

NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
REG_PLUGINS = DEFAULT_PLUGINS + ("xep_0077",)


async def register(pool: ClientPool, name: str, password: str, timeout: float = 20.0):
    """Sign up with slixmpp's XEP-0077 support, then log in on the same stream.

    Returns (client, None) on success or (client, error_condition) when the
    server refused the registration."""
    c = pool.make(f"{name}@{pool.server.domain}", password, plugins=REG_PLUGINS, resource="reg")
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()
    c.registration_form = None

    async def on_register(form):
        c.registration_form = form
        resp = c.Iq()
        resp["type"] = "set"
        resp["register"]["username"] = name
        resp["register"]["password"] = password
        try:
            await resp.send(timeout=10)
            outcome.set_result(None)
        except IqError as e:
            outcome.set_result(iq_error_condition(e) or "error")
            c.disconnect()

    c.add_event_handler("register", on_register)
    pool.start(c)
    done, _ = await asyncio.wait({outcome, c.login_failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if not outcome.done():
        reason = c.login_failed.result() if c.login_failed.done() else "timeout"
        raise AssertionError(f"registration of {name} never got an answer: {reason}; events {c.events}")
    cond = outcome.result()
    if cond is None:
        await c.wait_session(timeout)
    return c, cond


async def can_login(pool: ClientPool, name: str, password: str) -> bool:
    try:
        c = await pool.connect(f"{name}@{pool.server.domain}", password, roster=False, presence=False)
    except LoginFailed:
        return False
    await c.close()
    return True


async def raw_register(server, username: str | None, password: str | None) -> ET.Element:
    s = await RawStream.connect(server)
    try:
        await s.secure()
        fields = ""
        if username is not None:
            fields += f"<username>{username}</username>"
        if password is not None:
            fields += f"<password>{password}</password>"
        await s.send(f"<iq type='set' id='reg1'><query xmlns='{NS_REGISTER}'>{fields}</query></iq>")
        return await s.expect(f"{{{NS_CLIENT}}}iq", 15)
    finally:
        s.close()


def raw_error_condition(iq: ET.Element) -> str | None:
    err = iq.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and not c.tag.endswith("}text"):
            return c.tag.rsplit("}", 1)[1]
    return None


async def test_register_feature_advertised_after_tls(server):
    s = await RawStream.connect(server)
    try:
        features = await s.secure()
        assert features.find(f"{{{NS_REGISTER_FEATURE}}}register") is not None, \
            "in-band registration enabled but <register xmlns='http://jabber.org/features/iq-register'/> not advertised"
    finally:
        s.close()


async def test_register_then_login(xmpp):
    name, pw = unique_name("signup"), unique_password()
    c, cond = await register(xmpp, name, pw)
    assert cond is None, f"registration refused: {cond}"
    assert c.boundjid.bare == f"{name}@localhost"
    fields = set(c.registration_form["register"]["fields"])
    assert {"username", "password"} <= fields, f"registration form fields: {fields}"
    await c.close()
    # a separate, ordinary login with the new credentials
    c2 = await xmpp.connect(f"{name}@localhost", pw)
    assert c2.boundjid.bare == f"{name}@localhost"
    assert not await can_login(xmpp, name, pw + "nope")


async def test_registered_user_visible_to_admin_cli(server, xmpp):
    name, pw = unique_name("clivis"), unique_password()
    c, cond = await register(xmpp, name, pw)
    assert cond is None
    listing = server.cli("user", "list").stdout
    assert name in listing.split() or f"{name}@localhost" in listing.split(), listing


async def test_register_existing_username_conflicts(xmpp):
    acct = await xmpp.account("taken")
    c, cond = await register(xmpp, acct.name, "hijack-" + unique_password())
    assert cond == "conflict", f"expected <conflict/>, got {cond}"
    assert await can_login(xmpp, acct.name, acct.password), "original password no longer works"
    assert not await can_login(xmpp, acct.name, "hijack-attempt"), "hijacker's password works"


@pytest.mark.parametrize("username", ["bad user", "at@sign", "", "slash/name", "x" * 1100])
async def test_invalid_username_rejected(server, username):
    iq = await raw_register(server, username, unique_password())
    assert iq.get("type") == "error", f"registration of {username!r} accepted: {ET.tostring(iq, encoding='unicode')}"
    assert raw_error_condition(iq) in ("not-acceptable", "bad-request", "jid-malformed", "conflict",
                                       "not-allowed", "policy-violation"), ET.tostring(iq, encoding="unicode")


async def test_missing_password_rejected(server, xmpp):
    name = unique_name("nopw")
    iq = await raw_register(server, name, None)
    assert iq.get("type") == "error", ET.tostring(iq, encoding="unicode")
    assert name not in server.cli("user", "list").stdout


async def test_change_password_in_band(xmpp):
    acct = await xmpp.account("chpw")
    c = await xmpp.connect(acct, plugins=REG_PLUGINS)
    new = unique_password()
    await c.plugin["xep_0077"].change_password(new, timeout=10)
    await c.close()
    assert not await can_login(xmpp, acct.name, acct.password), "old password still works"
    assert await can_login(xmpp, acct.name, new), "new password does not work"


async def test_cancel_registration(xmpp):
    acct = await xmpp.account("bye")
    c = await xmpp.connect(acct, plugins=REG_PLUGINS)
    try:
        await c.plugin["xep_0077"].cancel_registration(timeout=10)
    except IqError as e:  # pragma: no cover - reported as failure
        pytest.fail(f"cancel registration refused: {iq_error_condition(e)}")
    except Exception:
        # the server may close the stream right after the result (XEP-0077 §3.2)
        pass
    await c.close()
    assert not await can_login(xmpp, acct.name, acct.password), "account still usable after cancellation"


async def test_registration_rate_limit_per_ip(server_factory, backend):
    srv = server_factory.start("reglimit", backend, {"registration": {"enabled": True, "max_per_ip_per_hour": 3}})
    pool = ClientPool(srv)
    try:
        names = [unique_name("rl") for _ in range(4)]
        results = []
        for n in names:
            c, cond = await register(pool, n, "pw-" + n)
            results.append(cond)
            await c.close()
        assert results[:3] == [None, None, None], f"first three registrations should pass: {results}"
        assert results[3] is not None, "4th registration from the same IP within an hour was accepted"
        assert not await can_login(pool, names[3], "pw-" + names[3]), "refused registration created an account"
        # accounts created by the operator are not limited
        await asyncio.to_thread(srv.add_user, unique_name("op"), "pw")
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_registration_disabled(server_factory, backend):
    srv = server_factory.start("noreg", backend, {"registration": {"enabled": False}})
    pool = ClientPool(srv)
    try:
        s = await RawStream.connect(srv)
        try:
            features = await s.secure()
            assert features.find(f"{{{NS_REGISTER_FEATURE}}}register") is None, \
                "registration disabled but still advertised"
        finally:
            s.close()
        name = unique_name("closed")
        iq = await raw_register(srv, name, "secret-pw")
        assert iq.get("type") == "error", "registration accepted although disabled"
        assert raw_error_condition(iq) in ("not-allowed", "service-unavailable", "forbidden",
                                           "feature-not-implemented", "not-authorized"), \
            ET.tostring(iq, encoding="unicode")
        assert not await can_login(pool, name, "secret-pw")
    finally:
        await pool.close_all()
        server_factory.stop(srv)
