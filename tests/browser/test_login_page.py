"""The login page keeps the user name after a wrong password; the CSP blocks nothing the pages need."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login
from tests.support.factories import PASSWORD, make_cells, make_user

pytestmark = pytest.mark.browser


def test_wrong_password_keeps_the_user_name_and_csp_breaks_nothing(live_server: str, browser) -> None:
    make_user("carla", role="admin")
    make_user("dora")
    make_cells(3)
    # Unlike the shared ``page`` fixture, this context enforces the Content-Security-Policy; so no
    # wait_for_function here (Playwright evaluates its predicate with eval, which the policy refuses).
    context = browser.new_context()
    page = context.new_page()
    refused = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )

    login(page, live_server, "carla", "not-the-password")
    page.wait_for_selector("#login-error")
    assert page.input_value("input[name=username]") == "carla"
    assert page.evaluate("document.activeElement.name") == "password"
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/label")
    page.wait_for_selector("#cell-image[data-cell-id]")

    # Deactivate asks first; dismissing the question leaves the account active.
    page.goto(f"{live_server}/admin/users")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("tr", has_text="dora").get_by_role("button", name="Deactivate").click()
    page.wait_for_timeout(300)
    status = page.locator("#users tr", has_text="dora").locator("td").nth(2)
    expect(status).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="dora").get_by_role("button", name="Deactivate").click()
    expect(status).to_have_text("deactivated")

    page.goto(f"{live_server}/docs")
    page.wait_for_selector(".swagger-ui .info")  # the nonce lets the inline start-up script run
    assert refused == []
    context.close()
