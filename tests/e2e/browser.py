"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright, so
that no browser is downloaded (scripts/bootstrap.sh installs the package)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

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
