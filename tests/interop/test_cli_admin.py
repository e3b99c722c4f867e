"""The operator's CLI: `kith config check` and `kith user add|passwd|del|list`,
checked through what a user then experiences when logging in."""

from __future__ import annotations

import subprocess

from kithtest.server import kith_bin
from kithtest.xmpp import NS_ROSTER, ClientPool, LoginFailed, make_friends, server_roster, unique_name, unique_password


async def can_login(pool: ClientPool, jid: str, password: str) -> bool:
    try:
        c = await pool.connect(jid, password, roster=False, presence=False)
    except LoginFailed:
        return False
    await c.close()
    return True


def listed(server, name: str) -> bool:
    out = server.cli("user", "list").stdout.split()
    return name in out or f"{name}@{server.domain}" in out


def test_config_check_accepts_the_test_config(server):
    res = subprocess.run([str(kith_bin()), "config", "check", str(server.config_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_config_check_accepts_minimal_config(tmp_path):
    cfg = tmp_path / "min.toml"
    cfg.write_text('[server]\ndomain = "localhost"\n')
    res = subprocess.run([str(kith_bin()), "config", "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_config_check_rejects_bad_configs(tmp_path):
    bad = {
        "syntax": "[server\ndomain = ",
        "wrong-type": '[limits]\nmax_stanza_size = "huge"\n',
        "bad-listen-address": '[listen]\nc2s = "not an address"\n',
    }
    for name, text in bad.items():
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(text)
        res = subprocess.run([str(kith_bin()), "config", "check", str(cfg)],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode != 0, f"`kith config check` accepted a {name} config"
        assert (res.stderr + res.stdout).strip(), f"no explanation printed for the {name} config"


async def test_user_lifecycle_while_running(xmpp, server):
    name, pw = unique_name("cli"), unique_password()
    jid = await server.aadd_user(name, pw)
    assert listed(server, name)
    assert await can_login(xmpp, jid, pw)

    new = unique_password()
    server.cli("user", "passwd", name, "--password", new)
    assert not await can_login(xmpp, jid, pw), "old password still works after `kith user passwd`"
    assert await can_login(xmpp, jid, new)

    server.cli("user", "del", name)
    assert not listed(server, name)
    assert not await can_login(xmpp, jid, new), "deleted user can still log in"


async def test_user_deleted_while_online_is_cut_off_and_leaves_rosters(xmpp, server):
    """`kith user del` on a running server does what deleting one's own account
    does: the sessions end, contacts see the account go offline and leave their
    roster (RFC 6121 §2.5, XEP-0077 §3.2)."""
    name, pw = unique_name("gone"), unique_password()
    jid = await server.aadd_user(name, pw)
    friend_acct = await xmpp.account("stays")
    doomed = await xmpp.connect(jid, pw, resource="phone")
    friend = await xmpp.connect(friend_acct)
    await make_friends(doomed, friend)

    out = server.cli("user", "del", name).stdout
    assert "ended 1 session" in out, out
    await doomed.wait_closed(timeout=10)
    assert not doomed.connected_now, "the deleted user's session is still open"
    assert any(e["condition"] == "not-authorized" for e in doomed.stream_errors), doomed.events
    await friend.wait_presence(lambda p: p["from"].bare == jid and p["type"] == "unavailable",
                               what="unavailable presence of the deleted contact")
    await friend.wait_iq(lambda iq: iq["type"] == "set" and any(
        it.get("jid") == jid and it.get("subscription") == "remove"
        for it in iq.xml.iter(f"{{{NS_ROSTER}}}item")), what="roster push removing the deleted contact")
    assert jid not in await server_roster(friend)
    assert not await can_login(xmpp, jid, pw)
    # Deleting it again says so.
    assert server.cli("user", "del", name, check=False).returncode != 0


def test_adding_an_existing_user_fails(server):
    name = unique_name("dup")
    server.add_user(name, "first-pw")
    res = server.cli("user", "add", name, "--password", "second-pw", check=False)
    assert res.returncode != 0, "`kith user add` silently accepted an existing user"


async def test_user_added_while_server_stopped(server_factory, backend):
    srv = server_factory.start("offlinecli", backend)
    pool = ClientPool(srv)
    try:
        srv.stop()
        name, pw = unique_name("stopped"), unique_password()
        srv.add_user(name, pw)
        srv.start()
        assert await can_login(pool, f"{name}@{srv.domain}", pw)
    finally:
        await pool.close_all()
        server_factory.stop(srv)
