"""One URL per page: the full page includes a partial, and with the HX-Request header the same URL answers
with that partial alone."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support.factories import make_user
from tests.support.http import browser_login

HTMX = {"HX-Request": "true"}


@pytest.mark.parametrize(
    ("url", "partial_starts"),
    [
        ("/admin/training", '<section id="runs"'),
        ("/admin/models", '<div class="models"'),
        ("/admin/users", None),
    ],
)
def test_a_page_and_its_partial_share_one_url(client: TestClient, url: str, partial_starts: str | None) -> None:
    make_user("root", role="admin")
    browser_login(client, "root")

    page = client.get(url)
    partial = client.get(url, headers=HTMX)

    assert page.status_code == partial.status_code == 200
    assert "<html" in page.text and "<html" not in partial.text
    body = partial.text.strip()
    if partial_starts:
        assert body.startswith(partial_starts), body[:200]
    assert body in page.text  # the partial is the very markup the page shows


def test_a_poll_of_the_runs_leaves_the_message_and_an_action_replaces_it(client: TestClient) -> None:
    make_user("root", role="admin")
    csrf = browser_login(client, "root")

    poll = client.get("/admin/training", headers=HTMX)
    refused = client.post("/admin/training/runs/999/cancel", data={"csrf_token": csrf}, headers=HTMX)

    assert 'id="run-message"' not in poll.text
    assert 'id="run-message" hx-swap-oob="true"' in refused.text and "999" in refused.text
