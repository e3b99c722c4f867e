"""slixmpp-based client helpers: connect, wait for session start, observe stanzas.

slixmpp is a real third-party XMPP client library; these helpers only add
bounded waiting and a log of every stanza the client received, so that tests can
assert on what a user's client actually got from the server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import slixmpp
from slixmpp.stanza import Iq, Message, Presence
from slixmpp.stanza.stream_error import StreamError

log = logging.getLogger("kithtest")

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_ROSTER = "jabber:iq:roster"
NS_BLOCKING = "urn:xmpp:blocking"

DEFAULT_PLUGINS = (
    "xep_0030",  # service discovery
    "xep_0012",  # last activity
    "xep_0049",  # private XML storage
    "xep_0054",  # vcard-temp
    "xep_0092",  # software version
    "xep_0191",  # blocking command
    "xep_0199",  # ping
    "xep_0202",  # entity time
    "xep_0203",  # delayed delivery
    "xep_0359",  # unique and stable stanza ids
)

LOGIN_TIMEOUT = 20.0
WAIT_TIMEOUT = 10.0


class LoginFailed(Exception):
    pass


@dataclass
class Account:
    name: str
    password: str
    jid: str  # bare JID

    def full(self, resource: str) -> str:
        return f"{self.jid}/{resource}"


_counter = itertools.count(1)


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{next(_counter)}{secrets.token_hex(3)}".lower()


def unique_password() -> str:
    return "pw-" + secrets.token_urlsafe(12)


def tag(st) -> str:
    xml = st.xml if hasattr(st, "xml") else st
    return xml.tag


def local(tagname: str) -> str:
    return tagname.rsplit("}", 1)[-1]


def body_of(st) -> str | None:
    return st.xml.findtext(f"{{{NS_CLIENT}}}body")


def error_condition(st) -> str | None:
    """The defined stanza error condition of an error stanza (e.g. 'service-unavailable')."""
    err = st.xml.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        return None
    for child in err:
        if child.tag.startswith(f"{{{NS_STANZAS}}}") and local(child.tag) != "text":
            return local(child.tag)
    return None


def iq_error_condition(exc: Exception) -> str | None:
    """Condition of a slixmpp IqError."""
    iq = getattr(exc, "iq", None)
    if iq is None:
        return None
    return error_condition(iq)


class KithClient(slixmpp.ClientXMPP):
    """A slixmpp ClientXMPP that records everything it receives."""

    def __init__(self, jid: str, password: str, ca: Path, *, mech: str | None = None,
                 direct_tls: bool = False, plugins=DEFAULT_PLUGINS, label: str | None = None):
        super().__init__(jid, password, sasl_mech=mech)
        self.label = label or jid
        # Verify the server certificate against the CA kith generated.
        self.ca_certs = Path(ca)
        # slixmpp, given an explicit host/port, tries direct TLS first and then
        # STARTTLS on the same port; pin exactly one method so each test
        # exercises the transport it names.
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        for p in plugins:
            self.register_plugin(p)
        # Manual subscription handling (auto_authorize=False would auto-*deny*).
        self.roster.auto_authorize = None
        self.roster.auto_subscribe = False
        self.received: list = []
        self._consumed: set[int] = set()
        self.stream_errors: list[StreamError] = []
        self.auth_failures: list = []
        self.events: list[str] = []
        self.session_started = asyncio.get_running_loop().create_future()
        self.login_failed = asyncio.get_running_loop().create_future()
        self.disconnected_at: float | None = None
        self.add_filter("in", self._record)
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("failed_all_auth", lambda _e: self._fail("SASL authentication failed"))
        self.add_event_handler("no_auth", lambda _e: self._fail("no acceptable SASL mechanism"))
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("ssl_invalid_chain", lambda e: self._fail(f"TLS certificate invalid: {e}"))
        self.add_event_handler("connection_failed", lambda e: self.events.append(f"connection_failed: {e}"))
        self.add_event_handler("disconnected", self._on_disconnected)

    # ---- event plumbing -------------------------------------------------
    def _record(self, stanza):
        if isinstance(stanza, (Message, Presence, Iq, StreamError)):
            self.received.append(stanza)
        return stanza

    def _on_session_start(self, _event):
        if not self.session_started.done():
            self.session_started.set_result(True)

    def _on_failed_auth(self, stanza):
        self.auth_failures.append(stanza)

    def _on_stream_error(self, err):
        self.stream_errors.append(err)
        self._fail(f"stream error: {err['condition']} {err['text']}")

    def _on_disconnected(self, reason):
        self.disconnected_at = time.monotonic()
        self.events.append(f"disconnected: {reason}")
        self._fail(f"disconnected before session start ({reason})")

    def _fail(self, why: str):
        self.events.append(why)
        if not self.login_failed.done() and not self.session_started.done():
            self.login_failed.set_result(why)

    @property
    def connected_now(self) -> bool:
        return self.transport is not None

    @property
    def sasl_failure_conditions(self) -> list[str]:
        return [f["condition"] for f in self.auth_failures]

    # ---- waiting ----------------------------------------------------------
    async def wait_session(self, timeout: float = LOGIN_TIMEOUT) -> None:
        done, _ = await asyncio.wait({self.session_started, self.login_failed}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.session_started.done():
            return
        reason = self.login_failed.result() if self.login_failed.done() else f"no session within {timeout}s"
        await self.close()
        raise LoginFailed(f"{self.label}: {reason}; events: {self.events}")

    async def wait_for(self, pred: Callable, timeout: float = WAIT_TIMEOUT, what: str = "stanza"):
        """Wait for (and consume) the first received stanza matching pred."""
        deadline = time.monotonic() + timeout
        while True:
            for i, st in enumerate(self.received):
                if i in self._consumed:
                    continue
                try:
                    ok = pred(st)
                except Exception:
                    ok = False
                if ok:
                    self._consumed.add(i)
                    return st
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.label}: no {what} within {timeout}s; received: "
                    + "; ".join(str(s)[:300] for s in self.received[-8:])
                )
            await asyncio.sleep(0.02)

    def forget(self) -> None:
        """Drop the record of received stanzas (for long-running clients)."""
        self.received.clear()
        self._consumed.clear()

    def matching(self, pred: Callable) -> list:
        out = []
        for st in self.received:
            try:
                if pred(st):
                    out.append(st)
            except Exception:
                pass
        return out

    async def wait_message(self, pred: Callable = lambda m: True, timeout: float = WAIT_TIMEOUT, what="message"):
        return await self.wait_for(lambda s: isinstance(s, Message) and pred(s), timeout, what)

    async def wait_presence(self, pred: Callable = lambda p: True, timeout: float = WAIT_TIMEOUT, what="presence"):
        return await self.wait_for(lambda s: isinstance(s, Presence) and pred(s), timeout, what)

    async def wait_iq(self, pred: Callable = lambda p: True, timeout: float = WAIT_TIMEOUT, what="iq"):
        return await self.wait_for(lambda s: isinstance(s, Iq) and pred(s), timeout, what)

    async def wait_closed(self, timeout: float = WAIT_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while self.connected_now and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.connected_now

    # ---- teardown ---------------------------------------------------------
    async def close(self) -> None:
        self.cancel_connection_attempt()
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=1.0), 4)
            except Exception:
                pass
        if self.transport is not None:
            self.abort()


class ClientPool:
    """Creates accounts and connected clients for one test; closes them afterwards."""

    def __init__(self, server):
        self.server = server
        self.clients: list[KithClient] = []

    async def account(self, prefix: str = "u", password: str | None = None) -> Account:
        name = unique_name(prefix)
        pw = password or unique_password()
        jid = await self.server.aadd_user(name, pw)
        return Account(name, pw, jid)

    def make(self, account_or_jid, password: str | None = None, *, resource: str | None = "",
             mech: str | None = None, direct_tls: bool = False, plugins=DEFAULT_PLUGINS,
             label: str | None = None) -> KithClient:
        if isinstance(account_or_jid, Account):
            jid, pw = account_or_jid.jid, account_or_jid.password
        else:
            jid, pw = account_or_jid, password
        if password is not None:
            pw = password
        if resource == "":
            resource = "r" + secrets.token_hex(3)
        full = f"{jid}/{resource}" if resource else jid
        c = KithClient(full, pw, self.server.ca_path, mech=mech, direct_tls=direct_tls,
                       plugins=plugins, label=label or full)
        self.clients.append(c)
        return c

    def start(self, c: KithClient, direct_tls: bool = False) -> None:
        port = self.server.c2s_tls_port if direct_tls else self.server.c2s_port
        c.connect(self.server.host, port)

    async def connect(self, account_or_jid, password: str | None = None, *, resource: str | None = "",
                      mech: str | None = None, direct_tls: bool = False, plugins=DEFAULT_PLUGINS,
                      roster: bool = True, presence: bool = True, priority: int | None = None,
                      timeout: float = LOGIN_TIMEOUT, label: str | None = None) -> KithClient:
        """Log in and wait for session start.

        By default, like a typical IM client: fetch the roster (becoming an
        'interested resource', RFC 6121 §2.1.6) and then send initial presence.
        """
        c = self.make(account_or_jid, password, resource=resource, mech=mech,
                      direct_tls=direct_tls, plugins=plugins, label=label)
        self.start(c, direct_tls)
        await c.wait_session(timeout)
        if roster:
            await c.get_roster(timeout=WAIT_TIMEOUT)
        if presence:
            if priority is None:
                c.send_presence()
            else:
                c.send_presence(ppriority=priority)
        return c

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        self.clients.clear()


async def server_roster(c: KithClient, timeout: float = WAIT_TIMEOUT) -> dict[str, dict]:
    """The full roster as the server has it.

    slixmpp's get_roster() sends the cached roster version when the server
    supports versioning (RFC 6121 §2.6), and the server may then answer with an
    empty result; this query carries no 'ver', so the server returns every item."""
    iq = c.Iq()
    iq["type"] = "get"
    iq.xml.append(ET.Element(f"{{{NS_ROSTER}}}query"))
    res = await iq.send(timeout=timeout)
    out = {}
    for item in res.xml.findall(f"{{{NS_ROSTER}}}query/{{{NS_ROSTER}}}item"):
        out[item.get("jid")] = {
            "name": item.get("name"),
            "subscription": item.get("subscription", "none"),
            "ask": item.get("ask"),
            "groups": [g.text for g in item.findall(f"{{{NS_ROSTER}}}group")],
        }
    return out


async def make_friends(a: KithClient, b: KithClient, timeout: float = WAIT_TIMEOUT) -> None:
    """Establish a mutual ('both') presence subscription between two online clients."""
    a_bare, b_bare = a.boundjid.bare, b.boundjid.bare
    for x, y, y_bare, x_bare in ((a, b, b_bare, a_bare), (b, a, a_bare, b_bare)):
        x.send_presence(pto=y_bare, ptype="subscribe")
        await y.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == x_bare,
                              timeout, what=f"subscribe from {x_bare}")
        y.send_presence(pto=x_bare, ptype="subscribed")
        await x.wait_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == y_bare,
                              timeout, what=f"subscribed from {y_bare}")
    # both rosters now say 'both' (checked from the server's copy)
    for x, other in ((a, b_bare), (b, a_bare)):
        deadline = time.monotonic() + timeout
        while True:
            items = await server_roster(x, timeout)
            if items.get(other, {}).get("subscription") == "both":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{x.boundjid}: roster item {other} is {items.get(other)}, expected 'both'")
            await asyncio.sleep(0.1)


def xml_of(st) -> str:
    return ET.tostring(st.xml, encoding="unicode")
