"""Helpers for sign-up by email and for the groups HTTP API: a local SMTP sink
(aiosmtpd) that captures what kith sends, and plain-HTTP helpers for pages that
are not JSON."""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from aiosmtpd.controller import Controller

from kithtest.server import free_port


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    body: str


class SmtpSink:
    """An SMTP server on loopback (plain SMTP, no STARTTLS) that keeps every mail."""

    def __init__(self):
        self.port = free_port()
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                part = message.get_body(("plain",))
                body = part.get_content() if part is not None else ""
                with sink.lock:
                    sink.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos),
                                           str(message["Subject"] or ""), body))
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def config(self) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "starttls": False,
                "from": "kith test <noreply@localhost>"}

    def mails_to(self, address: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if address.lower() in (r.lower() for r in m.recipients)]

    def code_for(self, address: str, timeout: float = 10.0) -> str:
        """The 6-digit code in the newest mail to `address`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mails = self.mails_to(address)
            if mails:
                found = re.search(r"\b(\d{6})\b", mails[-1].body)
                assert found, f"no code in the mail: {mails[-1].body!r}"
                return found.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no mail to {address} within {timeout}s")

    def close(self):
        self.controller.stop()


@dataclass
class Page:
    status: int
    headers: dict
    text: str


def get_page(url: str) -> Page:
    """GET a page (HTML, SVG) with the standard library; errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            status, headers, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, payload = error.code, dict(error.headers), error.read()
    return Page(status, {k.lower(): v for k, v in headers.items()}, payload.decode("utf-8", "replace"))
