"""A renewed TLS certificate is taken up without a restart: on SIGHUP, and on its
own when the files change; open sessions carry on; files that don't make a
certificate leave the current one in place and the server serving."""

from __future__ import annotations

import asyncio
import datetime
import signal
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kithtest.xmpp import ClientPool, body_of


def self_signed(common_name: str) -> tuple[bytes, bytes]:
    """A certificate for localhost (PEM) and its key (PKCS#8 PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def presented(port: int) -> x509.Certificate:
    """The certificate a new direct-TLS connection (XEP-0368) is shown."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["xmpp-client"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


async def wait_for_name(port: int, name: str, timeout: float) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = common_name(await asyncio.to_thread(presented, port))
        if seen == name or asyncio.get_running_loop().time() > deadline:
            return seen
        await asyncio.sleep(0.2)


async def test_sighup_takes_up_a_renewed_certificate_and_refuses_a_broken_one(server_factory, backend):
    srv = server_factory.start("tlshup", backend, {"tls": {"reload_check_secs": 0}})
    pool = ClientPool(srv)
    tls_dir = srv.data_dir / "tls"
    try:
        first = common_name(presented(srv.c2s_tls_port))
        alice, bob = await pool.account("tra"), await pool.account("trb")
        a = await pool.connect(alice)
        b = await pool.connect(bob)

        cert, key = self_signed("renewed once")
        (tls_dir / "key.pem").write_bytes(key)
        (tls_dir / "cert.pem").write_bytes(cert)
        # Without the signal (and with the file check off) nothing changes...
        await asyncio.sleep(1.5)
        assert common_name(presented(srv.c2s_tls_port)) == first
        # ...SIGHUP reads the files again.
        srv.proc.send_signal(signal.SIGHUP)
        assert await wait_for_name(srv.c2s_tls_port, "renewed once", 5) == "renewed once"
        # Sessions opened before carry on, on their old handshake.
        a.send_message(mto=bob.jid, mbody="after the renewal", mtype="chat")
        await b.wait_message(lambda m: body_of(m) == "after the renewal")

        # A broken file: refused, the current certificate stays, the server serves.
        (tls_dir / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        srv.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert common_name(presented(srv.c2s_tls_port)) == "renewed once"
        assert "the TLS certificate was not reloaded" in srv.log_tail(200)
        b.send_message(mto=alice.jid, mbody="still serving", mtype="chat")
        await a.wait_message(lambda m: body_of(m) == "still serving")
    finally:
        await pool.close_all()
        server_factory.stop(srv)


async def test_changed_certificate_files_are_taken_up_on_their_own(server_factory, backend):
    srv = server_factory.start("tlswatch", backend, {"tls": {"reload_check_secs": 1}})
    tls_dir = srv.data_dir / "tls"
    try:
        first = presented(srv.c2s_tls_port)
        cert, key = self_signed("renewed by certbot")
        (tls_dir / "key.pem").write_bytes(key)
        (tls_dir / "cert.pem").write_bytes(cert)
        assert await wait_for_name(srv.c2s_tls_port, "renewed by certbot", 10) == "renewed by certbot"
        assert presented(srv.c2s_tls_port).public_key() != first.public_key()
    finally:
        server_factory.stop(srv)
