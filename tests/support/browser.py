"""Headless Chromium through Playwright: one browser for the session, a fresh context per test."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# One Playwright instance for the whole session: a second sync_playwright() inside the first fails.
@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    # Playwright's wait_for_function evaluates with eval, which the app's Content-Security-Policy refuses;
    # tests/browser/test_login_page.py checks the pages under the policy in a context of its own.
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    yield page
    context.close()
