"""Helpers for kith's HTTP JSON API (/api/v1/): a small client on the standard
library's urllib, an SMS gateway stand-in (webhook and Twilio-style receiver)
that records what the server sends, and phone numbers for tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kithtest.server import free_port


@dataclass
class Reply:
    status: int
    headers: dict
    body: dict | None
    raw: bytes

    @property
    def error(self) -> str | None:
        return (self.body or {}).get("error") if isinstance(self.body, dict) else None


class Api:
    """Calls the API of one kith server over plain HTTP."""

    def __init__(self, server):
        self.base = f"http://{server.host}:{server.http_port}/api/v1"

    def call_sync(self, method: str, path: str, body=None, *, token: str | None = None,
                  raw: bytes | None = None, content_type: str = "application/json") -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                status, headers, payload = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, headers, payload = error.code, dict(error.headers), error.read()
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = None
        return Reply(status, {k.lower(): v for k, v in headers.items()}, parsed, payload)

    async def call(self, method: str, path: str, body=None, **kwargs) -> Reply:
        return await asyncio.to_thread(self.call_sync, method, path, body, **kwargs)


class SmsGateway:
    """Records every POST: the webhook sender's JSON and the Twilio-style form."""

    def __init__(self, secret: str = "sms-secret"):
        self.secret = secret
        self.port = free_port()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.status = 200
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with gateway.lock:
                    gateway.requests.append({
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    })
                    status = gateway.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def webhook_code(self, phone: str) -> str:
        """The latest code sent to `phone` by the webhook sender, signature checked."""
        with self.lock:
            found = [r for r in self.requests if r["path"] == "/sms"]
        for request in reversed(found):
            payload = json.loads(request["body"])
            if payload["to"] != phone:
                continue
            expected = "sha256=" + hmac.new(self.secret.encode(), request["body"], hashlib.sha256).hexdigest()
            assert hmac.compare_digest(request["headers"].get("x-kith-signature", ""), expected), \
                "webhook signature does not verify"
            assert payload["code"] in payload["text"]
            return payload["code"]
        raise AssertionError(f"no SMS to {phone}; got {[r['path'] for r in found]}")

    def sent_to(self, phone: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests
                       if r["path"] == "/sms" and json.loads(r["body"]).get("to") == phone)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def basic_auth(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic", header
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password


def form(body: bytes) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(body.decode(), strict_parsing=True))


def us_number() -> str:
    """A random valid US number (area code 201), E.164."""
    return f"+1201{random.randint(2, 9)}{random.randint(0, 999999):06d}"


def national(e164_us: str) -> str:
    """The US national format of a +1 number: (201) 555-0123."""
    digits = e164_us[2:]
    return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"


async def sign_up(api: Api, gateway: SmsGateway, phone: str, device: str = "phone") -> dict:
    """Registers (or signs in) `phone` with the code from the webhook; returns the
    verify answer (jid, device_id, credential, new_account)."""
    started = await api.call("POST", "/register/start", {"phone": phone})
    assert started.status == 200, started
    code = gateway.webhook_code(started.body["phone"])
    verified = await api.call("POST", "/register/verify",
                              {"phone": phone, "code": code, "device_name": device})
    assert verified.status == 200, verified
    return verified.body


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")
