"""Calls: what a device needs to set one up. XEP-0215 tells it where STUN and
TURN are; kith's own STUN listener answers aioice (a real ICE library) with the
device's address; kith's own TURN relay carries an ICE connection between two
aioice endpoints; TURN credentials made from the secret shared with a real
coturn get aioice a relayed candidate there; XEP-0353 call proposals reach
every device of the callee, offline ones at login.

coturn is Debian's `coturn` (`.ci/run` installs it and sets
KITH_REQUIRE_COTURN=1, so there the TURN test runs rather than skips)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from aioice import Connection, TransportPolicy, stun
from slixmpp.exceptions import IqError

from kithtest.server import free_udp_port
from kithtest.xmpp import ClientPool

NS = "urn:xmpp:extdisco:2"
NS_JMI = "urn:xmpp:jingle-message:0"
TURN_SECRET = "a-secret-shared-with-coturn-" + secrets.token_hex(8)


async def services(client, kind: str | None = None) -> list[dict]:
    iq = client.Iq()
    iq["type"] = "get"
    iq["to"] = client.boundjid.domain
    query = ET.SubElement(iq.xml, f"{{{NS}}}services")
    if kind:
        query.set("type", kind)
    result = await iq.send(timeout=10)
    return [dict(s.attrib) for s in result.xml.find(f"{{{NS}}}services")]


async def test_the_server_says_where_stun_is_and_answers_a_binding_request(server):
    pool = ClientPool(server)
    try:
        alice = await pool.account("cst")
        a = await pool.connect(alice)
        info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.domain, timeout=10)
        assert NS in info["disco_info"]["features"]
        found = await services(a)
        assert found[0] == {"type": "stun", "host": "localhost", "port": str(server.stun_port),
                            "transport": "udp", "name": "kith"}, found
        # The server's own relay, on the same port, with a credential.
        assert [(s["type"], s["port"], s["transport"]) for s in found[1:]] == [
            ("turn", str(server.stun_port), "udp")], found
        assert [s["type"] for s in await services(a, "stun")] == ["stun"]

        # aioice's own STUN codec: a Binding request, and the answer parsed
        # (its FINGERPRINT checked) with the address the request came from.
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        try:
            request = stun.Message(message_method=stun.Method.BINDING,
                                   message_class=stun.Class.REQUEST)
            request.add_fingerprint()
            await loop.sock_sendto(sock, bytes(request), ("127.0.0.1", server.stun_port))
            data = await asyncio.wait_for(loop.sock_recv(sock, 1500), 5)
            response = stun.parse_message(data)
            assert response.message_class == stun.Class.RESPONSE
            assert response.transaction_id == request.transaction_id
            assert response.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
            assert "FINGERPRINT" in response.attributes
            # Not STUN: no answer, and the listener keeps serving.
            await loop.sock_sendto(sock, b"hello there, not a stun message",
                                   ("127.0.0.1", server.stun_port))
            await loop.sock_sendto(sock, bytes(request), ("127.0.0.1", server.stun_port))
            again = stun.parse_message(await asyncio.wait_for(loop.sock_recv(sock, 1500), 5))
            assert again.transaction_id == request.transaction_id
        finally:
            sock.close()

        # ICE as a calling device does it: a server-reflexive candidate from kith.
        ice = Connection(ice_controlling=True, stun_server=("127.0.0.1", server.stun_port),
                         use_ipv6=False)
        try:
            await asyncio.wait_for(ice.gather_candidates(), 15)
            reflexive = [c for c in ice.local_candidates if c.type == "srflx"]
            hosts = {(c.host, c.port) for c in ice.local_candidates if c.type == "host"}
            assert reflexive, [c.to_sdp() for c in ice.local_candidates]
            assert all((c.host, c.port) in hosts for c in reflexive), "the address each came from"
        finally:
            await ice.close()
    finally:
        await pool.close_all()


def relay_metrics(srv) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=10) as res:
        text = res.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("kith_turn_")}


async def test_the_servers_own_relay_carries_a_call_between_two_devices(server_factory, backend):
    """Two aioice endpoints, the caller restricted to relayed candidates: ICE
    connects through kith's TURN relay (Allocate, ChannelBind, ChannelData both
    ways) with the credential XEP-0215 handed out, and data flows both ways."""
    srv = server_factory.start("relay", backend, {"calls": {"relay_allow_private": True}})
    pool = ClientPool(srv)
    try:
        a = await pool.connect(await pool.account("crl"))
        (turn,) = await services(a, "turn")
        assert turn["host"] == "localhost" and turn["port"] == str(srv.stun_port)

        async def endpoint(password: str, **kwargs) -> Connection:
            return Connection(turn_server=("127.0.0.1", srv.stun_port), turn_username=turn["username"],
                              turn_password=password, use_ipv6=False, **kwargs)

        # A wrong password gets no relayed address (401 each time).
        wrong = await endpoint("not-the-password", ice_controlling=True)
        try:
            await asyncio.wait_for(wrong.gather_candidates(), 15)
            assert not [c for c in wrong.local_candidates if c.type == "relay"]
        finally:
            await wrong.close()

        caller = await endpoint(turn["password"], ice_controlling=True,
                                transport_policy=TransportPolicy.RELAY)
        callee = Connection(ice_controlling=False, use_ipv6=False)
        try:
            await asyncio.wait_for(asyncio.gather(caller.gather_candidates(),
                                                  callee.gather_candidates()), 15)
            relays = [c for c in caller.local_candidates if c.type == "relay"]
            assert relays and relays[0].host == "127.0.0.1", [c.to_sdp() for c in caller.local_candidates]
            assert all(c.type == "relay" for c in caller.local_candidates)
            for one, other in ((caller, callee), (callee, caller)):
                for candidate in one.local_candidates:
                    await other.add_remote_candidate(candidate)
                await other.add_remote_candidate(None)
                other.remote_username, other.remote_password = one.local_username, one.local_password
            await asyncio.wait_for(asyncio.gather(caller.connect(), callee.connect()), 30)
            await caller.send(b"hello over the relay")
            assert await asyncio.wait_for(callee.recv(), 5) == b"hello over the relay"
            await callee.send(b"and back")
            assert await asyncio.wait_for(caller.recv(), 5) == b"and back"
            # What an operator sees (Prometheus's own parser): the allocation
            # held, and at least these two payloads relayed (ICE's checks too).
            samples = relay_metrics(srv)
            assert samples["kith_turn_allocations"] >= 1
            assert samples["kith_turn_relayed_datagrams_total"] >= 2
            assert samples["kith_turn_relayed_bytes_total"] >= len(b"hello over the relay" b"and back")
        finally:
            await asyncio.gather(caller.close(), callee.close())
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_extdisco_refuses_what_it_does_not_define(server):
    pool = ClientPool(server)
    try:
        a = await pool.connect(await pool.account("csx"))
        iq = a.Iq()
        iq["type"] = "set"
        iq["to"] = a.boundjid.domain
        ET.SubElement(iq.xml, f"{{{NS}}}services")
        with pytest.raises(IqError) as refused:
            await iq.send(timeout=10)
        assert refused.value.iq["error"]["condition"] == "bad-request"
        # No credentials for a service that needs none, or that isn't there.
        iq = a.Iq()
        iq["type"] = "get"
        iq["to"] = a.boundjid.domain
        ET.SubElement(ET.SubElement(iq.xml, f"{{{NS}}}credentials"), f"{{{NS}}}service",
                      host="localhost", type="stun")
        with pytest.raises(IqError) as refused:
            await iq.send(timeout=10)
        assert refused.value.iq["error"]["condition"] == "item-not-found"
    finally:
        await pool.close_all()


@pytest.fixture
def coturn(tmp_path):
    binary = shutil.which("turnserver")
    if binary is None:
        if os.environ.get("KITH_REQUIRE_COTURN") == "1":
            pytest.fail("coturn (turnserver) is not installed")
        pytest.skip("coturn (turnserver) is not installed")
    port = free_udp_port()
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
         "--relay-ip=127.0.0.1", "--min-port=40000", "--max-port=40999",
         "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=localhost",
         "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
         f"--pidfile={tmp_path / 'turnserver.pid'}", "--log-file=stdout", "--simple-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_turn_credentials_from_the_server_work_on_coturn(coturn, server_factory, backend):
    srv = server_factory.start("calls", backend, {"calls": {
        "turn_host": "127.0.0.1", "turn_port": coturn, "turn_transports": ["udp"],
        "turn_secret": TURN_SECRET, "credential_ttl_secs": 600}})
    pool = ClientPool(srv)
    try:
        alice = await pool.account("ctu")
        a = await pool.connect(alice)
        turn = await services(a, "turn")
        assert len(turn) == 1, turn
        service = turn[0]
        assert (service["host"], service["port"], service["transport"]) == ("127.0.0.1", str(coturn), "udp")
        assert service["restricted"] == "1" and service["expires"].endswith("Z")
        expiry, user = service["username"].split(":", 1)
        assert user == alice.jid
        assert TURN_SECRET not in str(service)

        async def relayed(username: str, password: str) -> list:
            ice = Connection(ice_controlling=True, turn_server=("127.0.0.1", coturn),
                             turn_username=username, turn_password=password,
                             turn_transport="udp", use_ipv6=False)
            try:
                await asyncio.wait_for(ice.gather_candidates(), 20)
                return [c for c in ice.local_candidates if c.type == "relay"]
            finally:
                await ice.close()

        relays = await relayed(service["username"], service["password"])
        assert relays, "coturn gave no relayed address for the server's credential"
        assert relays[0].host == "127.0.0.1" and 40000 <= relays[0].port <= 40999
        # Another user's name with this password is refused: the password is
        # bound to the username it was made for.
        assert not await relayed(f"{expiry}:mallory@localhost", service["password"])

        # <credentials/> (§3.3) for the same service.
        iq = a.Iq()
        iq["type"] = "get"
        iq["to"] = a.boundjid.domain
        ET.SubElement(ET.SubElement(iq.xml, f"{{{NS}}}credentials"), f"{{{NS}}}service",
                      host="127.0.0.1", type="turn")
        result = await iq.send(timeout=10)
        again = [dict(s.attrib) for s in result.xml.find(f"{{{NS}}}credentials")]
        assert [s["username"].split(":", 1)[1] for s in again] == [alice.jid]
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_a_call_proposal_rings_every_device_and_reaches_an_offline_one(server):
    """XEP-0353: the proposal is a message, so every device of the callee gets
    it, one that was offline at login too (the log keeps it); so does the
    retraction that follows it."""
    pool = ClientPool(server)
    try:
        alice, bob = await pool.account("cja"), await pool.account("cjb")
        # Bob's tablet has signed in before: it is one of his devices.
        tablet = await pool.connect(bob, resource="tablet")
        await tablet.close()
        phone = await pool.connect(bob, resource="phone")
        a = await pool.connect(alice)
        call = secrets.token_hex(6)
        for kind in ("propose", "retract"):
            message = a.make_message(mto=bob.jid, mtype="chat")
            element = ET.SubElement(message.xml, f"{{{NS_JMI}}}{kind}", id=call)
            if kind == "propose":
                ET.SubElement(element, "{urn:xmpp:jingle:apps:rtp:1}description", media="audio")
            ET.SubElement(message.xml, "{urn:xmpp:hints}store")
            message.send()

        def signal(kind):
            return lambda m: (getattr(m, "name", "") == "message"
                              and m.xml.find(f"{{{NS_JMI}}}{kind}[@id='{call}']") is not None)

        await phone.wait_message(signal("propose"), what="the proposal on the phone")
        await phone.wait_message(signal("retract"), what="the retraction on the phone")
        tablet = await pool.connect(bob, resource="tablet")
        await tablet.wait_message(signal("propose"), what="the proposal on the tablet, at login")
        await tablet.wait_message(signal("retract"), what="the retraction on the tablet")
        await asyncio.sleep(0.5)
        assert len(phone.matching(signal("propose"))) == 1
    finally:
        await pool.close_all()
