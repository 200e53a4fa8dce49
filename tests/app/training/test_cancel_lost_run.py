"""Cancelling a run whose worker is gone ends it at once, so a new run can start (issue 13, 19)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.db import session_scope
from app.errors import Conflict
from app.models import TrainingRun, utcnow
from app.training import service
from tests.support.factories import get_user, make_running_run


def _start_run() -> int:
    with session_scope() as session:
        return service.create_run(
            session=session, user=get_user("root"), method="supervised", profile="tiny", params={}
        ).id


def test_cancel_of_a_run_with_no_live_worker_ends_it_at_once(pg_db_url: str) -> None:
    run_id = make_running_run(silent_s=60)  # killed a minute ago: no heartbeat since
    with session_scope() as session:
        run = service.request_cancel(session=session, run_id=run_id)
        assert run.status == "cancelled" and run.finished_at is not None
        assert "no heartbeat" in run.error
    new_id = _start_run()  # no 409 "cancel it first"
    with session_scope() as session:
        assert service.get_run(session=session, run_id=run_id).status == "cancelled"
        assert service.active_run(session=session).id == new_id
        # a worker that comes back late finds the run not running and stops
        assert service.cancel_requested(session=session, run_id=run_id)


def test_cancel_of_a_live_run_waits_for_its_worker_then_ends_when_the_worker_goes_silent(pg_db_url: str) -> None:
    run_id = make_running_run(silent_s=2)  # heartbeat 2 s ago: the worker is alive
    with session_scope() as session:
        run = service.request_cancel(session=session, run_id=run_id)
        assert run.status == "running" and run.cancel_requested
    with pytest.raises(Conflict, match="stopping"):
        _start_run()
    with session_scope() as session:  # the worker was killed right after: its heartbeats stop
        silent = utcnow() - timedelta(seconds=service.CANCEL_SILENCE_S + 1)
        session.get(TrainingRun, run_id).heartbeat_at = silent
    new_id = _start_run()
    with session_scope() as session:
        assert service.get_run(session=session, run_id=run_id).status == "cancelled"
        assert service.active_run(session=session).id == new_id


def test_the_cancel_page_ends_a_lost_run_and_retrain_starts(pg_db_url: str) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.support.http import token_headers

    run_id = make_running_run(silent_s=45)
    with TestClient(create_app()) as client:
        headers = token_headers(client, "root")
        cancelled = client.post(f"/api/v1/training-runs/{run_id}/cancel", headers=headers)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert _start_run() > run_id
