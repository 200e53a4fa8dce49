"""Signing in from tests: a bearer token for the API, the login form for the pages."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.support.factories import PASSWORD


def token_headers(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    response = client.post("/api/v1/auth/token", data={"username": name, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    return {"Authorization": f"Bearer {body['access_token']}"}


def browser_login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the form like a browser; return the page's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/login", data={"username": name, "password": password, "csrf_token": csrf}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/label").text).group(1)
