"""Fixtures of the browser tests: one headless Chromium per session, a fresh context (no cookies) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from playwright.async_api import Browser, BrowserContext, Page, async_playwright


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def browser_context(chromium: Browser) -> AsyncIterator[BrowserContext]:
    """A private browsing context (its own cookies and storage), French like the portal's first audience."""
    context = await chromium.new_context(locale="fr-FR", viewport={"width": 1440, "height": 900})
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def page(browser_context: BrowserContext) -> Page:
    return await browser_context.new_page()
