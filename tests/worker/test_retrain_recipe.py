"""The worker's retrain runs the shared recipe ``ml.retrain.retrain`` (the one ``bench active``
runs), cold and then warm-started from the active model."""

from __future__ import annotations

import pytest

from app.db import session_scope
from app.models import User
from app.statuses import RunStatus
from app.training import service
from ml import retrain as recipe
from tests.worker.conftest import CLASSES, insert_cells
from worker import training


def _queued_run(params: dict) -> int:
    with session_scope() as session:
        user = session.query(User).filter(User.username == "expert").one()
        return service.create_run(session=session, user=user, method="supervised", profile="tiny", params=params).id


def test_the_worker_retrains_through_ml_retrain_and_warm_starts_from_the_active_model(
    loop_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_cells({name: 5 for name in CLASSES}, unlabelled=9)
    calls: list[dict] = []

    def spy(*args, **kwargs):
        retrained = recipe.retrain(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "retrained": retrained})
        return retrained

    monkeypatch.setattr(training, "retrain", spy)
    params = {"epochs": 1, "warm_start": True, "auto_promote": True}

    first = _queued_run(params)
    assert training.run_retrain(first) == RunStatus.SUCCEEDED
    assert len(calls) == 1
    x_labelled, y, x_unlabelled, names = calls[0]["args"]
    assert len(x_labelled) == len(y) == 15 and len(x_unlabelled) == 9 and sorted(names) == sorted(CLASSES)
    assert calls[0]["kwargs"]["seed"] == first and calls[0]["kwargs"]["params"] == params
    assert calls[0]["kwargs"]["active"] is None
    cold = calls[0]["retrained"]
    assert cold.config.epochs == 1 and cold.config.round_epochs == 1  # the recipe's rule: half, at least one
    assert cold.data["warm_started_from"] is None

    with session_scope() as session:
        promoted = service.active_model(session=session)
        assert promoted is not None  # auto-promoted: there was no active model
        promoted_id = promoted.id
        run = service.get_run(session=session, run_id=first)
        assert run.metrics["data"] == cold.data  # what the worker stores is the recipe's summary

    second = _queued_run(params)
    assert training.run_retrain(second) == RunStatus.SUCCEEDED
    assert len(calls) == 2
    assert calls[1]["kwargs"]["active"].id == promoted_id
    assert calls[1]["retrained"].data["warm_started_from"] == promoted_id
    with session_scope() as session:
        assert service.get_run(session=session, run_id=second).metrics["data"]["warm_started_from"] == promoted_id
