"""The centre's dashboard in Debian's Chromium (async Playwright) while a `kit sim` World runs.

Async, so the browser shares the event loop of the World whose simulated radio and team it
drives: ``operator_page`` logs the drill's operator in and, when the page is done, checks
that every request it made went to the centre; ``text_when`` polls an element until its
text settles into an expected form (a generous deadline, never a timed assertion).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

from playwright.async_api import Browser, Locator, Page

CHROMIUM = "/usr/bin/chromium"  # Debian's; never a browser downloaded by Playwright
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
OPERATOR = "operator"  # the login World makes for each drill (world.operator_password)
PAGE_TIMEOUT_MS = 60_000  # a shared, noisy machine: waits are generous


@asynccontextmanager
async def operator_page(
    browser: Browser, centre_url: str, password: str, user: str = OPERATOR
) -> AsyncIterator[Page]:
    """The dashboard, logged in and live; afterwards, no request may have left the centre."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    seen: list[str] = []
    try:
        page = await context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("request", lambda r: seen.append(r.url))
        await page.goto(f"{centre_url}/dashboard")
        assert urlparse(page.url).path == "/dashboard/login", page.url
        await page.fill('input[name="user"]', user)
        await page.fill('input[name="password"]', password)
        await page.click('button[type="submit"]')
        await page.wait_for_url(f"{centre_url}/dashboard")
        await page.locator("body[data-ready='1']").wait_for(state="attached")
        await page.locator("#live.up").wait_for(state="attached")
        yield page
    finally:
        await context.close()
    host = urlparse(centre_url).netloc
    outside = [
        u for u in seen if not u.startswith(("blob:", "data:")) and urlparse(u).netloc != host
    ]
    assert seen and outside == [], f"requests that left the centre: {outside}"


async def text_when(
    locator: Locator, pattern: str, timeout_s: float = 60.0, *, other_than: str | None = None
) -> str:
    """The locator's text once it matches ``pattern`` (and differs from ``other_than``, what
    it said before), or as it is at the deadline (the caller's assertion then shows what the
    page said instead)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while True:
        if await locator.count():
            text = await locator.first.inner_text()
            if re.search(pattern, text) and text != other_than:
                return text
        if time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.2)
