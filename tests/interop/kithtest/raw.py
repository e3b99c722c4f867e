"""A deliberately small raw XMPP stream (asyncio TCP + ssl) for byte-exact tests.

Used where a well-behaved client library cannot send what the test needs
(malformed XML, oversize stanzas, spoofed addresses, pre-auth stanzas). Server
output is parsed with a real XML pull parser, so a server that answers with
broken XML fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import xml.etree.ElementTree as ET

NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"

STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream to='{to}' version='1.0' xml:lang='en' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


class StreamClosed(Exception):
    """The server closed the TCP/TLS connection (or the XML stream)."""


def tls_context(ca_path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_path))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def local(tagname: str) -> str:
    return tagname.rsplit("}", 1)[-1]


def stream_error_conditions(el: ET.Element) -> list[str]:
    return [local(c.tag) for c in el if c.tag.startswith("{" + NS_STREAMS_ERR + "}") and local(c.tag) != "text"]


class RawStream:
    def __init__(self, server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.header: dict[str, str] | None = None
        self.eof = False
        self.stream_ended = False  # server sent </stream:stream>
        self.log: list[ET.Element] = []  # every top-level element received
        self._pending: list[ET.Element] = []
        self._reset_parser()

    # ---- connection ---------------------------------------------------------
    @classmethod
    async def connect(cls, server, *, direct_tls: bool = False, timeout: float = 10.0) -> "RawStream":
        if direct_tls:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(server.host, server.c2s_tls_port,
                                        ssl=tls_context(server.ca_path), server_hostname=server.domain),
                timeout)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(server.host, server.c2s_port), timeout)
        return cls(server, reader, writer, direct_tls)

    def _reset_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.header = None

    async def send(self, data) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.writer.is_closing():
            raise StreamClosed("connection already closed")
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), 10)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.eof = True
            raise StreamClosed(f"send failed: {exc!r}") from exc

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass

    # ---- reading --------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.root = el
                    self.header = dict(el.attrib)
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    self.stream_ended = True
                elif self.depth == 1:
                    self._pending.append(el)
                    self.log.append(el)
                    if self.root is not None:
                        try:
                            self.root.remove(el)
                        except ValueError:
                            pass

    async def _read_more(self, timeout: float) -> None:
        if self.eof:
            raise StreamClosed("connection closed by server")
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError:
            raise
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.eof = True
            raise StreamClosed(f"connection error: {exc!r}") from exc
        if not data:
            self.eof = True
            raise StreamClosed("connection closed by server")
        self._feed(data)

    async def next(self, timeout: float = 10.0) -> ET.Element:
        """Next top-level element (child of the stream). Raises StreamClosed or TimeoutError."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            if self.stream_ended:
                raise StreamClosed("server closed the XML stream")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no element within {timeout}s")
            await self._read_more(remaining)
        return self._pending.pop(0)

    async def expect(self, tag: str, timeout: float = 10.0) -> ET.Element:
        el = await self.next(timeout)
        if el.tag != tag:
            raise AssertionError(f"expected {tag}, got {ET.tostring(el, encoding='unicode')[:500]}")
        return el

    async def wait_header(self, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while self.header is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError("no stream header")
            await self._read_more(remaining)
        return self.header

    async def stream_error(self, timeout: float = 10.0) -> list[str] | None:
        """Read until a <stream:error/>; return its conditions, or None if the
        connection closed without one. Raises TimeoutError if neither happens."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"neither a stream error nor a close within {timeout}s")
            try:
                el = await self.next(remaining)
            except StreamClosed:
                return None
            if el.tag == f"{{{NS_STREAM}}}error":
                return stream_error_conditions(el)

    async def wait_closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection (EOF/reset) within timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await self._read_more(remaining)
            except StreamClosed:
                return True
            except asyncio.TimeoutError:
                return False
            except ET.ParseError:
                # garbage after the stream closed still means we keep reading to EOF
                continue
        return True

    # ---- negotiation ---------------------------------------------------------
    async def open(self, to: str | None = None, timeout: float = 10.0) -> ET.Element:
        """Send the stream header; return the stream features."""
        await self.send(STREAM_HEADER.format(to=to or self.server.domain))
        await self.wait_header(timeout)
        return await self.expect(f"{{{NS_STREAM}}}features", timeout)

    async def starttls(self, timeout: float = 10.0) -> None:
        await self.send(f"<starttls xmlns='{NS_TLS}'/>")
        await self.expect(f"{{{NS_TLS}}}proceed", timeout)
        await asyncio.wait_for(
            self.writer.start_tls(tls_context(self.server.ca_path), server_hostname=self.server.domain),
            timeout)
        self.tls = True
        self._reset_parser()

    async def secure(self, timeout: float = 10.0) -> ET.Element:
        """Open the stream and make it TLS-protected; return the post-TLS features."""
        if self.tls:
            return await self.open(timeout=timeout)
        await self.open(timeout=timeout)
        await self.starttls(timeout)
        return await self.open(timeout=timeout)

    async def auth_plain(self, user: str, password: str, authzid: str = "", timeout: float = 15.0) -> ET.Element:
        """One SASL PLAIN attempt; returns <success/> or <failure/>."""
        token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        el = await self.next(timeout)
        if el.tag not in (f"{{{NS_SASL}}}success", f"{{{NS_SASL}}}failure"):
            raise AssertionError(f"unexpected SASL answer {ET.tostring(el, encoding='unicode')[:300]}")
        return el

    async def bind(self, resource: str | None = None, timeout: float = 10.0) -> str:
        res = f"<resource>{resource}</resource>" if resource else ""
        await self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{res}</bind></iq>")
        el = await self.expect(f"{{{NS_CLIENT}}}iq", timeout)
        jid = el.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if el.get("type") != "result" or not jid:
            raise AssertionError(f"bind failed: {ET.tostring(el, encoding='unicode')[:300]}")
        return jid

    async def login(self, user: str, password: str, resource: str | None = None, *, presence: bool = True,
                    timeout: float = 15.0) -> str:
        """STARTTLS (unless direct TLS), SASL PLAIN, restart, bind, initial presence. Returns the full JID."""
        await self.secure(timeout)
        el = await self.auth_plain(user, password, timeout=timeout)
        if local(el.tag) != "success":
            raise AssertionError(f"login of {user} failed: {ET.tostring(el, encoding='unicode')}")
        self._reset_parser()
        await self.open(timeout=timeout)
        jid = await self.bind(resource, timeout)
        if presence:
            await self.send("<presence/>")
        self.jid = jid
        return jid


def sasl_condition(el: ET.Element) -> str | None:
    for c in el:
        if c.tag.startswith("{" + NS_SASL + "}") and local(c.tag) != "text":
            return local(c.tag)
    return None
