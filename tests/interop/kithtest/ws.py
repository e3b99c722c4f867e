"""A minimal RFC 6455 WebSocket client (asyncio), enough to check RFC 7395 framing.

The full login over WebSocket is done by the third-party @xmpp/client (see
tests/interop/ws/); this helper only checks what that client hides: the opening
handshake's negotiated subprotocol and that each WebSocket message carries one
complete XML element.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

from .raw import tls_context

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsClosed(Exception):
    pass


class WebSocket:
    def __init__(self, reader, writer, status: int, headers: dict[str, str]):
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, server, *, secure: bool, path: str = "/xmpp-websocket",
                      protocols: list[str] | None = ("xmpp",), timeout: float = 10.0) -> "WebSocket":
        if secure:
            host_hdr = f"{server.domain}:{server.https_port}"
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                server.host, server.https_port, ssl=tls_context(server.ca_path),
                server_hostname=server.domain), timeout)
        else:
            host_hdr = f"{server.host}:{server.http_port}"
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(server.host, server.http_port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host_hdr}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        head = raw.decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        ws = cls(reader, writer, status, headers)
        if status == 101:
            expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != expected:
                raise AssertionError(f"bad Sec-WebSocket-Accept: {headers}")
        return ws

    async def send_text(self, text: str) -> None:
        payload = text.encode("utf-8")
        await self._send_frame(0x1, payload)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def _read_frame(self):
        b1, b2 = await self.reader.readexactly(2)
        fin, opcode = b1 & 0x80, b1 & 0x0F
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        if b2 & 0x80:
            mask = await self.reader.readexactly(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(await self.reader.readexactly(n)))
        else:
            data = await self.reader.readexactly(n)
        return bool(fin), opcode, data

    async def recv(self, timeout: float = 10.0) -> str:
        """Next text message (reassembling fragments). Raises WsClosed on a close frame/EOF."""
        async def _recv():
            parts = []
            while True:
                try:
                    fin, opcode, data = await self._read_frame()
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    raise WsClosed(f"connection ended: {exc!r}")
                if opcode == 0x8:
                    self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                    raise WsClosed(f"close frame {self.close_code}")
                if opcode == 0x9:
                    await self._send_frame(0xA, data)
                    continue
                if opcode == 0xA:
                    continue
                parts.append(data)
                if fin:
                    return b"".join(parts).decode("utf-8")
        return await asyncio.wait_for(_recv(), timeout)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass
