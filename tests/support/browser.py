"""Headless Chromium for the viewer and portal tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser download is neither reachable from here nor needed: ``make test`` installs Debian's
chromium (``make browser``) and Playwright launches that executable. The launch flags keep the browser quiet
on a machine without a display or outbound network. Screenshots are test artifacts, written under
``$EMAGE_ARTIFACTS_DIR`` (default ``.local/artifacts``) so CI can keep them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.async_api import Page, expect

from emage_devstack.dev_users import DEV_USERS, DevUser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL through SwiftShader: OHIF's Cornerstone3D renders with WebGL2 and there is no GPU here.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)


def artifacts_dir() -> Path:
    """Where screenshots go (created on first use)."""
    directory = Path(os.environ.get("EMAGE_ARTIFACTS_DIR", ".local/artifacts")) / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of ``page`` named ``<name>.png`` among the test artifacts."""
    path = artifacts_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def dev_user(username: str) -> DevUser:
    return next(user for user in DEV_USERS if user.username == username)


async def keycloak_sign_in(page: Page, username: str) -> None:
    """Sign ``username`` in on the Keycloak login page ``page`` is showing, with the TOTP step for staff.

    Fills the real forms of the realm's browser flow (username + password, then the one-time code for
    every professional), exactly as a person would; returns once Keycloak has redirected away.
    """
    user = dev_user(username)
    await page.locator("#username").fill(user.username)
    await page.locator("#password").fill(user.password)
    await page.locator("#kc-login").click()
    if user.is_staff:
        otp = page.locator("#otp")
        await expect(otp).to_be_visible(timeout=30_000)
        await otp.fill(user.totp_now())
        await page.locator("#kc-login").click()
    await page.wait_for_url(re.compile(r"^(?!.*/protocol/openid-connect/).*$"), timeout=30_000)
