"""After signing in, ``next`` leads only to a page of this site: never to another host."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.support.factories import PASSWORD, make_user


def sign_in(client: TestClient, next: str) -> str:
    """Submit the login form with ``next``; the address the answer redirects to."""
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    response = client.post(
        "/login",
        data={"username": "ana", "password": PASSWORD, "csrf_token": csrf, "next": next},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response.headers["location"]


@pytest.mark.parametrize(
    "external",
    [
        "//evil.example",
        "//evil.example/label",
        "https://evil.example",
        "http://evil.example/label",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "evil.example",
    ],
)
def test_an_external_next_is_refused(client: TestClient, external: str) -> None:
    make_user("ana")
    assert sign_in(client, external) == "/label"


@pytest.mark.parametrize("local", ["/label", "/admin/import", "/training?run=3"])
def test_a_local_next_is_followed(client: TestClient, local: str) -> None:
    make_user("ana", role="admin")
    assert sign_in(client, local) == local
