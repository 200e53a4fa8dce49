"""The web server on the embedded default (SQLite), as `scripts/demo` runs it: requests at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy.orm import Session

from app import db
from app.users.schemas import UserCreate
from app.users.service import create_user
from cli.server import start_server
from tests.support.factories import PASSWORD


def test_requests_at_once_on_sqlite_all_answer(tmp_path: Path) -> None:
    """Every request takes SQLite's write lock (BEGIN IMMEDIATE) and the others wait for it: the user lookup
    must wait off the event loop, or it stops the loop the holder needs to finish (a browser loading a
    sample page's fields at once got "database is locked" after 30 s)."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with Session(engine) as session, session.begin():
        create_user(session=session, user_create=UserCreate(username="ana", password=PASSWORD, role="admin"))
    engine.dispose()
    process, base = start_server(url)
    try:
        token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "ana", "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        paths = ["/api/v1/samples", "/api/v1/stats", "/api/v1/classes", "/api/v1/training-runs"] * 4

        def get(path: str) -> int:
            # under the 30 s busy timeout: a deadlocked request times out here instead of waiting for it
            return httpx.get(f"{base}{path}", headers=headers, timeout=20).status_code

        with ThreadPoolExecutor(len(paths)) as pool:
            statuses = list(pool.map(get, paths))
        assert statuses == [200] * len(paths)
    finally:
        process.terminate()
        process.wait(timeout=10)
