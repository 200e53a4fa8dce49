"""The retraining loop's pieces that need no worker: split, stale runs, migration, broker config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect

from app import db
from app.db import session_scope
from app.models import TrainingRun
from app.settings import Settings
from app.training import broker, service
from ml.data import resize
from ml.retrain import stratified_split
from tests.support.factories import make_running_run, make_user
from worker.data import cells_to_tensor


def test_stratified_split_holds_out_a_fifth_and_keeps_rare_classes_whole() -> None:
    y = [0] * 10 + [1] * 5 + [2] * 2 + [3]
    train, val = stratified_split(y, seed=1)
    y = np.asarray(y)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert np.bincount(y[val], minlength=4).tolist() == [2, 1, 0, 0]
    assert set(y[train].tolist()) == {0, 1, 2, 3}  # every class trains
    again, _ = stratified_split(y.tolist(), seed=1)
    assert again.tolist() == train.tolist()


def test_cells_to_tensor_and_resize() -> None:
    pixels = np.arange(64 * 64 * 3, dtype=np.uint32).astype(np.uint8).reshape(64, 64, 3)
    x = cells_to_tensor([pixels.tobytes(), pixels.tobytes()])
    assert x.shape == (2, 3, 64, 64) and x.dtype.is_floating_point is False
    assert x[0, 1, 2, 3].item() == pixels[2, 3, 1]
    assert resize(x, 32).shape == (2, 3, 32, 32)
    assert resize(x[:0], 32).shape == (0, 3, 32, 32)


def test_stale_running_runs_are_failed_and_free_the_slot(pg_db_url: str) -> None:
    make_running_run(silent_s=service.HEARTBEAT_TIMEOUT_S + 5)
    with session_scope() as session:
        assert service.active_run(session=session) is None
        (run,) = service.list_runs(session=session)
        assert run.status == "failed" and "heartbeats" in run.error


def test_broker_config_without_and_with_redis(tmp_path: Path) -> None:
    fs = broker.celery_config(Settings(redis_url=None, broker_dir=tmp_path))
    assert fs["broker_url"] == "filesystem://"
    assert fs["broker_transport_options"]["data_folder_in"] == fs["broker_transport_options"]["data_folder_out"]
    assert fs["task_acks_late"] and fs["worker_prefetch_multiplier"] == 1 and fs["task_reject_on_worker_lost"]
    red = broker.celery_config(Settings(redis_url="redis://127.0.0.1:6379/3"))
    assert red["broker_url"].startswith("redis://")
    assert red["task_routes"][broker.TASK_RETRAIN] == {"queue": "train"}
    assert red["task_routes"][broker.TASK_SCORE] == {"queue": "score"}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migration_0002_up_and_down(backend: str, tmp_path: Path) -> None:
    from tests.support.database import create_pg_database, drop_pg_database

    url = create_pg_database("leukolab_test_m0002") if backend == "postgres" else f"sqlite:///{tmp_path}/m.db"
    try:
        db.upgrade(url)
        engine = db.make_engine(url)
        assert {"training_runs", "model_versions", "predictions"} <= set(inspect(engine).get_table_names())
        engine.dispose()
        db.downgrade(url, "0001")
        engine = db.make_engine(url)
        assert "training_runs" not in inspect(engine).get_table_names()
        engine.dispose()
        db.upgrade(url)
    finally:
        if backend == "postgres":
            drop_pg_database("leukolab_test_m0002")


def test_web_process_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, app.main, app.training.routes, cli.main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_promote_and_roll_back_keep_one_active_model(pg_db_url: str) -> None:
    from app.models import ModelVersion

    admin_id = make_user("root", role="admin")
    with session_scope() as session:
        run = TrainingRun(status="succeeded", method="supervised", profile="tiny", params={}, created_by=admin_id)
        session.add(run)
        session.flush()
        ids = [
            service.register_model_version(
                session=session, run_id=run.id, artefact_path=f"/x/{i}.pt", class_names=["a", "b"], metrics=None
            ).id
            for i in range(2)
        ]
    for model_id in (ids[0], ids[1], ids[0]):  # promote, promote the newer, roll back
        with session_scope() as session:
            service.promote(session=session, model_id=model_id)
        with session_scope() as session:
            active = session.query(ModelVersion).filter(ModelVersion.is_active.is_(True)).all()
            assert [v.id for v in active] == [model_id]
            assert active[0].scoring_status == "queued" and active[0].promoted_at is not None


def test_two_simultaneous_retrain_requests_start_one_run(client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.http import token_headers

    make_user("root", role="admin")
    headers = token_headers(client, "root")
    body = {"method": "supervised", "profile": "tiny"}
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(
            pool.map(lambda _: client.post("/api/v1/training-runs", json=body, headers=headers).status_code, range(4))
        )
    assert codes == [202, 409, 409, 409]
    runs = client.get("/api/v1/training-runs", headers=headers).json()
    assert [run["status"] for run in runs] == ["queued"]
    bad = client.post("/api/v1/training-runs", json={"method": "magic", "profile": "tiny"}, headers=headers)
    assert bad.status_code == 422 and "mean-teacher+lp" in bad.json()["allowed"]


def test_a_run_failed_as_lost_stops_its_worker_and_keeps_its_status(pg_db_url: str) -> None:
    run_id = make_running_run(silent_s=service.HEARTBEAT_TIMEOUT_S + 5)
    with session_scope() as session:
        assert not service.cancel_requested(session=session, run_id=run_id)
    with session_scope() as session:
        assert service.expire_stale_runs(session=session) == 1
    with session_scope() as session:
        assert service.cancel_requested(session=session, run_id=run_id)  # the worker's should_stop says stop
        service.finish_run(session=session, run_id=run_id, status="cancelled")
    with session_scope() as session:
        assert service.get_run(session=session, run_id=run_id).status == "failed"
