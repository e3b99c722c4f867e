"""Helpers for driving the web client in Debian's Chromium with Playwright.

Playwright (PyPI) drives the system browser (`/usr/bin/chromium`, or
$KITH_CHROMIUM); nothing is downloaded. Every page records console errors and
uncaught exceptions so tests can assert the client ran cleanly.

The fixtures `browser` (one per module), `peers` (slixmpp clients on the
module's loop) and `tabs` (opens browser contexts, and on teardown asserts each
logged no console errors and labelled every control) are shared by the
`test_web_*` modules, which import them.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from kithtest.xmpp import ClientPool

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("KITH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


# Marks a browser test module. A developer without Debian's chromium gets the
# browser tests skipped; `.ci/run` installs it and sets KITH_REQUIRE_CHROMIUM=1, so
# in CI a missing browser fails the tests instead of skipping them.
requires_chromium = pytest.mark.skipif(
    chromium_path() is None and os.environ.get("KITH_REQUIRE_CHROMIUM") != "1",
    reason="chromium is not installed (apt-get install chromium)",
)


async def launch(playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)


class Tab:
    """One browser context + page with its console errors collected."""

    def __init__(self, context: BrowserContext, page: Page, base_url: str):
        self.context = context
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    @classmethod
    async def open(cls, browser: Browser, server, **context_options) -> "Tab":
        base = f"http://{server.host}:{server.http_port}/"
        context = await browser.new_context(**context_options)
        page = await context.new_page()
        tab = cls(context, page, base)
        await page.goto(base)
        return tab

    async def use_password(self) -> None:
        """Picks the address + password method on the sign-in screen."""
        await self.page.get_by_role("tab", name="Password").click()

    async def sign_in(self, jid: str, password: str) -> None:
        page = self.page
        await self.use_password()
        await page.get_by_label("Address or user name").fill(jid)
        await page.get_by_role("textbox", name="Password").fill(password)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("list", name="Chat list")).to_be_visible(timeout=15000)

    def chat_row(self, name: str):
        return self.page.get_by_role("list", name="Chat list").get_by_role("button", name=name)

    async def open_chat(self, name: str) -> None:
        await self.chat_row(name).click()
        await expect(self.page.locator("#chat-name")).to_have_text(name)

    async def send(self, text: str) -> None:
        box = self.page.get_by_label("Type a message")
        await box.fill(text)
        await box.press("Enter")

    def bubble(self, text: str):
        """The message bubble whose own text (not a quote of another) contains `text`."""
        own = self.page.locator(":scope > .body, :scope > .deleted, :scope > .location", has_text=text)
        return self.page.locator(".msg").filter(has=own)

    async def unnamed_controls(self) -> list[str]:
        """Buttons and form fields without an accessible name (a basic a11y check)."""
        return await self.page.evaluate("""() => {
          const out = [];
          for (const el of document.querySelectorAll('button, input, textarea, select, [role=button], a[href]')) {
            if (el.type === 'hidden') continue;
            const labelled = (el.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
              .map((id) => document.getElementById(id)?.textContent || '').join(' ');
            const name = (el.getAttribute('aria-label') || labelled || [...(el.labels || [])].map((l) => l.textContent).join(' ')
              || el.getAttribute('title') || (el.matches('input,textarea,select') ? '' : el.textContent) || '').trim();
            if (!name) out.push(el.outerHTML.slice(0, 120));
          }
          return out;
        }""")

    async def shot(self, name: str) -> None:
        """Saves a screenshot when $KITH_WEB_SCREENSHOTS names a folder (the README's
        pictures come from `KITH_WEB_SCREENSHOTS=docs/screenshots scripts/test -k web_client`)."""
        folder = os.environ.get("KITH_WEB_SCREENSHOTS")
        if folder:
            os.makedirs(folder, exist_ok=True)
            await self.page.screenshot(path=os.path.join(folder, f"{name}.png"))

    async def close(self) -> None:
        await self.context.close()

    async def close_clean(self, ignore: str | None = None) -> None:
        """Closes the tab; asserts it logged no console errors (but those
        matching the regex `ignore`) and that every control has a name."""
        unnamed = await self.unnamed_controls()
        errors = [e for e in self.errors if not (ignore and re.search(ignore, e))]
        await self.close()
        assert not errors, f"console errors in the page: {errors}"
        assert not unnamed, f"controls without an accessible name: {unnamed}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with async_playwright() as p:
        b = await launch(p)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def peers(server):
    """slixmpp clients on the module's event loop (the browser's loop)."""
    pool = ClientPool(server)
    yield pool
    await pool.close_all()


@pytest_asyncio.fixture(loop_scope="module")
async def tabs(browser, server):
    """`await tabs(**context_options)` opens a tab; each is checked clean at teardown."""
    opened: list[Tab] = []

    async def open_tab(**options) -> Tab:
        tab = await Tab.open(browser, server, **options)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        await tab.close_clean()
