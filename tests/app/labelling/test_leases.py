"""Lease renewal: the labeller looking at a cell keeps it; a lapsed lease passes to whoever renews it."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db import session_scope
from app.models import QueueEntry
from tests.support.factories import make_cells, make_user
from tests.support.http import token_headers


def lease_of(cell_id: int) -> tuple[int | None, datetime | None]:
    with session_scope() as session:
        entry = session.scalar(select(QueueEntry).where(QueueEntry.cell_id == cell_id))
        return (entry.leased_to, entry.lease_until) if entry else (None, None)


def expire(cell_id: int) -> None:
    with session_scope() as session:
        session.execute(
            update(QueueEntry)
            .where(QueueEntry.cell_id == cell_id)
            .values(lease_until=datetime(2000, 1, 1))  # long lapsed
        )


def test_renewing_extends_the_holders_lease(client: TestClient) -> None:
    ana_id = make_user("ana")
    make_cells(1)
    ana = token_headers(client, "ana")
    cell_id = client.get("/api/v1/queue/next", headers=ana).json()["cell_id"]
    expire(cell_id)

    renewed = client.post(f"/api/v1/cells/{cell_id}/lease", headers=ana)

    assert renewed.status_code == 200
    until = datetime.fromisoformat(renewed.json()["lease_until"])
    holder, stored = lease_of(cell_id)
    assert holder == ana_id and stored is not None and stored.year > 2000
    assert abs((until.replace(tzinfo=None) - stored.replace(tzinfo=None)).total_seconds()) < 1
    assert timedelta(seconds=290) < until - datetime.now(until.tzinfo) <= timedelta(seconds=300)


def test_a_free_cell_is_taken_by_renewing_and_a_lapsed_lease_passes_on(client: TestClient) -> None:
    make_user("ana")
    bob_id = make_user("bob")
    (cell_id,) = make_cells(1)
    ana, bob = token_headers(client, "ana"), token_headers(client, "bob")
    assert lease_of(cell_id) == (None, None)

    assert client.post(f"/api/v1/cells/{cell_id}/lease", headers=ana).status_code == 200
    assert client.post(f"/api/v1/cells/{cell_id}/lease", headers=bob).status_code == 409
    expire(cell_id)
    assert client.post(f"/api/v1/cells/{cell_id}/lease", headers=bob).status_code == 200
    assert lease_of(cell_id)[0] == bob_id
