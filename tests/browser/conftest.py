"""A live uvicorn server on the test database; the Chromium fixtures live in tests/support/browser.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cli import server


def start_server(database_url: str, **env: str) -> tuple[subprocess.Popen, str]:
    """The app under uvicorn on ``database_url``; ``env`` as settings without their prefix."""
    return server.start_server(database_url, env={f"LEUKOLAB_{k.upper()}": v for k, v in env.items()})


@contextmanager
def serving(database_url: str, **env: str) -> Iterator[str]:
    """The app under uvicorn for the length of the block; its base URL."""
    process, base = start_server(database_url, **env)
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def live_server(pg_db_url: str) -> Iterator[str]:
    with serving(pg_db_url) as base:
        yield base


def login(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
