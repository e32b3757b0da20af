"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright, so
that no browser is downloaded (scripts/bootstrap.sh installs the package)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, Page, Request, async_playwright

from tests.support.processes import OUTPUT_DIR

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    # Nothing of the browser's own (updates, sync, safe browsing lists) goes out either.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Milliseconds Playwright waits for something to show on the page.
PAGE_DEADLINE_MS = 20_000


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), (
        "the browser tests need Debian's chromium: apt-get install chromium"
    )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def kept_if_it_fails(page: Page, name: str, *logs: list[str]) -> AsyncIterator[None]:
    """What the page looked like when what it wraps failed, kept with the run's logs:
    `<name>-failure.png`, `.html`, and `.console.txt` (what `logs` hold by then: the page's
    console and errors)."""
    try:
        yield
    except Exception:
        await page.screenshot(path=str(OUTPUT_DIR / f"{name}-failure.png"), full_page=True)
        (OUTPUT_DIR / f"{name}-failure.html").write_text(await page.content())
        lines = [line for log in logs for line in log]
        (OUTPUT_DIR / f"{name}-failure.console.txt").write_text("\n".join(lines))
        raise


@dataclass
class WatchedPage:
    """A page of our own site, with what it did besides: requests to anywhere but `base`, its
    errors, and its console."""

    page: Page
    elsewhere: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """No error, no console error, nothing loaded from another site."""
        assert not self.problems, self.problems
        assert not [line for line in self.console if line.startswith("error")], self.console
        assert not self.elsewhere, f"the page loaded from elsewhere: {self.elsewhere}"


@asynccontextmanager
async def watched_page(base: str, name: str) -> AsyncIterator[WatchedPage]:
    """A 1440x900 page in a fresh Chromium, watched (WatchedPage) and kept as `name` if what it
    wraps fails (kept_if_it_fails)."""
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(PAGE_DEADLINE_MS)
        watched = WatchedPage(page)

        def note_request(request: Request) -> None:
            if not request.url.startswith(base + "/"):
                watched.elsewhere.append(request.url)

        page.on("request", note_request)
        page.on("pageerror", lambda error: watched.problems.append(str(error)))
        page.on(
            "console", lambda message: watched.console.append(f"{message.type}: {message.text}")
        )
        async with kept_if_it_fails(page, name, watched.console, watched.problems):
            yield watched
