"""A live uvicorn server on the test database; the Chromium fixtures live in tests/support/browser.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from cli import server


def start_server(database_url: str, **env: str) -> tuple[subprocess.Popen, str]:
    """The app under uvicorn on ``database_url``; ``env`` as settings without their prefix."""
    return server.start_server(database_url, env={f"LEUKOLAB_{k.upper()}": v for k, v in env.items()})


@pytest.fixture
def live_server(pg_db_url: str) -> Iterator[str]:
    process, base = start_server(pg_db_url)
    yield base
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def login(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
