"""The retraining loop end to end: a real worker process, Redis, PostgreSQL and the API."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.labelling.service import add_label
from app.models import ModelVersion, Prediction, TrainingRun, User
from app.settings import get_settings
from tests.support.factories import make_user
from tests.support.http import token_headers
from tests.worker.conftest import CLASSES, insert_cells, wait_for

pytestmark = pytest.mark.worker
TINY = {"method": "mean-teacher+lp", "profile": "tiny", "epochs": 2}
REASONS = {"high entropy", "low margin", "rejected by filters", "diverse", "unlike any known class"}


def run_status(client: TestClient, headers: dict, run_id: int) -> dict:
    response = client.get(f"/api/v1/training-runs/{run_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_retrain_promote_score_and_queue(client: TestClient, start_worker, tmp_path: Path) -> None:
    cells = insert_cells({name: 8 for name in CLASSES}, unlabelled=36)
    make_user("cyto")
    admin = token_headers(client, "expert")
    cyto = token_headers(client, "cyto")
    assert client.post("/api/v1/training-runs", json=TINY, headers=cyto).status_code == 403

    created = client.post("/api/v1/training-runs", json=TINY, headers=admin)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued"
    run_id = created.json()["id"]
    refused = client.post("/api/v1/training-runs", json=TINY, headers=admin)  # no worker yet: still queued
    assert refused.status_code == 409 and f"#{run_id}" in refused.json()["detail"]

    start_worker()
    seen = set()

    def finished() -> dict | None:
        body = run_status(client, admin, run_id)
        seen.add(body["status"])
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    body = wait_for(finished, timeout=150, message="the run to finish")
    assert body["status"] == "succeeded", body["error"]
    assert "running" in seen or body["progress"]["history"]
    assert body["progress"]["history"], "the worker wrote per-epoch progress"
    metrics = body["metrics"]
    assert set(metrics["per_class"]) == set(CLASSES)
    assert len(metrics["confusion"]) == 3 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["data"]["n_val"] == 3 * 2 and metrics["data"]["n_train"] == 3 * 6  # 20 % held out per class
    # the page says what the run trains in, not only which vector unit the CPU names (the tiny profile: no bf16)
    assert body["progress"]["precision"] == metrics["data"]["precision"] == "float32"
    assert "funnel" in metrics and metrics["funnel"]["unlabelled"] == 36

    models = client.get("/api/v1/models", headers=admin).json()
    assert len(models) == 1 and models[0]["run_id"] == run_id and not models[0]["is_active"]
    model_id = models[0]["id"]
    assert Path(tmp_path / "artefacts" / f"run-{run_id}.pt").is_file()
    confusion = client.get(f"/admin/models/{model_id}/confusion.png", headers=admin)
    assert confusion.status_code == 200 and confusion.content.startswith(b"\x89PNG")

    def exported() -> bytes | None:  # the worker exports a version just after registering it
        response = client.get(f"/admin/models/{model_id}/export.zip", params={"format": "onnx"}, headers=admin)
        return response.content if response.status_code == 200 else None

    with zipfile.ZipFile(io.BytesIO(wait_for(exported, timeout=60, message="the ONNX export"))) as archive:
        card = json.loads(archive.read(f"model-v{model_id}.card.json"))
    assert set(card["classes"]) == set(CLASSES) and card["model_version"] == model_id
    assert card["labels"]["expert"] == 24 and card["labels"]["pseudo"] is not None

    promoted = client.post(f"/api/v1/models/{model_id}/promote", headers=admin)
    assert promoted.status_code == 200 and promoted.json()["is_active"]

    def scored() -> dict | None:
        model = client.get("/api/v1/models", headers=admin).json()[0]
        return model if model["scoring"]["status"] in ("ready", "failed") else None

    model = wait_for(scored, timeout=90, message="scoring and the queue refresh")
    assert model["scoring"] == {**model["scoring"], "status": "ready", "done": 36, "total": 36}
    with session_scope() as session:
        outcomes = dict(
            session.execute(
                select(Prediction.filter_outcome, func.count())
                .where(Prediction.model_version_id == model_id)
                .group_by(Prediction.filter_outcome)
            ).all()
        )
        assert sum(outcomes.values()) == 36
        assert set(outcomes) <= {"rejected", "passed_entropy", "passed_propagation"}
        # every prediction carries its OOD score; those above the threshold are never pseudo-labelled
        threshold = session.get(ModelVersion, model_id).ood_threshold
        assert threshold is not None
        scores = session.execute(
            select(Prediction.ood_score, Prediction.pseudo_label).where(Prediction.model_version_id == model_id)
        ).all()
        assert all(score is not None for score, _ in scores)
        assert all(pseudo is None for score, pseudo in scores if score > threshold)

    queue = client.get("/api/v1/queue", headers=cyto).json()
    assert len(queue) == 36
    assert {entry["reason"] for entry in queue} <= REASONS
    assert [e["priority"] for e in queue] == sorted((e["priority"] for e in queue), reverse=True)
    assert all(e["detail"]["predicted"] in CLASSES for e in queue)
    assert {e["cell_id"] for e in queue} == set(cells["unlabelled"])

    nxt = client.get("/api/v1/queue/next", headers=cyto).json()
    assert nxt["cell_id"] == queue[0]["cell_id"] and nxt["reason"] == queue[0]["reason"]
    # the suggestion is shown only when the model is confident enough to help, or the cell is unlike any class
    if queue[0]["reason"] == "unlike any known class":
        assert nxt["suggestion"]["unlike_known"] is True
    elif queue[0]["detail"]["confidence"] >= get_settings().suggestion_min_confidence:
        assert nxt["suggestion"]["unlike_known"] is False
        assert {k: nxt["suggestion"][k] for k in ("label", "confidence")} == {
            "label": queue[0]["detail"]["predicted"],
            "confidence": pytest.approx(queue[0]["detail"]["confidence"], abs=1e-3),
        }
    else:
        assert nxt["suggestion"] is None
    # pseudo-labels are not expert labels
    stats = client.get("/api/v1/stats", headers=cyto).json()
    assert stats["labelled"] == 24

    models_page = client.get("/admin/models", headers=admin)
    assert models_page.status_code == 200
    assert "F1-score" in models_page.text and f"/admin/models/{model_id}/confusion.png" in models_page.text
    assert "Pseudo-label funnel" in models_page.text
    training_page = client.get("/admin/training", headers=admin)
    assert training_page.status_code == 200 and f"Run #{run_id}" in training_page.text
    assert client.get("/admin/models", headers=cyto).status_code == 403

    # a class is added and labelled: the second run learns it with a new head, warm-starting the rest
    added = client.post("/api/v1/classes", json={"name": "Platelet", "hotkey": "p", "is_wbc": False}, headers=admin)
    assert added.status_code == 201, added.text
    with session_scope() as session:
        expert = session.scalar(select(User).where(User.username == "expert"))
        for cell_id in cells["unlabelled"][:5]:
            add_label(session=session, user=expert, cell_id=cell_id, value="platelet")
    second = client.post("/api/v1/training-runs", json={**TINY, "method": "supervised"}, headers=admin).json()["id"]
    body = wait_for(
        lambda: (b := run_status(client, admin, second))["status"] in ("succeeded", "failed") and b,
        120,
        message="the second run",
    )
    assert body["status"] == "succeeded", body["error"]
    assert body["metrics"]["data"]["warm_started_from"] == model_id
    assert body["metrics"]["baseline"]["model_version"] == model_id
    assert 0.0 <= body["metrics"]["baseline"]["accuracy"] <= 1.0
    newest = client.get("/api/v1/models", headers=admin).json()[0]
    assert newest["class_names"] == [*CLASSES, "platelet"] and newest["ood_threshold"] is not None
    # the active model does not know platelet: promoting it again (a roll back) needs a confirmation
    client.post(f"/api/v1/models/{newest['id']}/promote", headers=admin)
    refused = client.post(f"/api/v1/models/{model_id}/promote", headers=admin)
    assert refused.status_code == 409 and "Platelet" in refused.json()["detail"]
    confirmed = client.post(f"/api/v1/models/{model_id}/promote?confirm_missing_classes=true", headers=admin)
    assert confirmed.status_code == 200, confirmed.text


def test_cancel_and_a_killed_worker(client: TestClient, start_worker, tmp_path: Path) -> None:
    insert_cells({name: 5 for name in CLASSES}, unlabelled=15)
    admin = token_headers(client, "expert")
    long_run = {"method": "mean-teacher", "profile": "tiny", "epochs": 400}

    # a queued run is cancelled at once
    queued = client.post("/api/v1/training-runs", json=long_run, headers=admin).json()["id"]
    assert client.post(f"/api/v1/training-runs/{queued}/cancel", headers=admin).json()["status"] == "cancelled"
    assert client.post(f"/api/v1/training-runs/{queued}/cancel", headers=admin).status_code == 409

    worker = start_worker()
    run_id = client.post("/api/v1/training-runs", json=long_run, headers=admin).json()["id"]
    wait_for(lambda: (run_status(client, admin, run_id)["progress"] or {}).get("epoch"), 60, message="training")
    assert client.post(f"/api/v1/training-runs/{run_id}/cancel", headers=admin).status_code == 200
    body = wait_for(
        lambda: (b := run_status(client, admin, run_id))["status"] != "running" and b, 30, message="the cancel"
    )
    assert body["status"] == "cancelled"
    assert not list((tmp_path / "artefacts").glob("*.pt")), "a cancelled run leaves no artefact"

    # SIGKILL mid-run: the next worker's start-up marks the run failed; nothing stays "running"
    run_id = client.post("/api/v1/training-runs", json=long_run, headers=admin).json()["id"]
    wait_for(lambda: run_status(client, admin, run_id)["status"] == "running", 60, message="running")
    worker.kill()
    assert run_status(client, admin, run_id)["status"] == "running"
    start_worker()
    body = run_status(client, admin, run_id)
    assert body["status"] == "failed" and "stopped" in body["error"]
    with session_scope() as session:
        assert session.scalar(select(func.count(ModelVersion.id))) == 0
        assert session.scalar(select(func.count(TrainingRun.id)).where(TrainingRun.status == "running")) == 0
    # and a new run can start
    again = client.post("/api/v1/training-runs", json=long_run, headers=admin)
    assert again.status_code == 202
    client.post(f"/api/v1/training-runs/{again.json()['id']}/cancel", headers=admin)


def test_redis_down_refuses_retrain_but_labelling_goes_on(
    pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.main import create_app
    from tests.support.database import use_database

    use_database(pg_db_url, monkeypatch, redis_url="redis://127.0.0.1:1/0", artefact_dir=str(tmp_path))
    cells = insert_cells({name: 2 for name in CLASSES}, unlabelled=3)
    with TestClient(create_app()) as client:
        admin = token_headers(client, "expert")
        refused = client.post("/api/v1/training-runs", json=TINY, headers=admin)
        assert refused.status_code == 503 and "Redis" in refused.json()["detail"]
        with session_scope() as session:
            assert session.scalar(select(func.count(TrainingRun.id))) == 0
        nxt = client.get("/api/v1/queue/next", headers=admin)
        assert nxt.status_code == 200 and nxt.json()["cell_id"] in cells["unlabelled"]
        label = client.post(
            f"/api/v1/cells/{nxt.json()['cell_id']}/labels", json={"label": "eosinophil"}, headers=admin
        )
        assert label.status_code == 201


def test_filesystem_broker_and_sqlite_without_redis(tmp_path: Path, start_worker_fs) -> None:
    """The embedded default (scripts/demo): SQLite, kombu's filesystem transport under broker_dir."""
    from app.main import create_app

    insert_cells({name: 3 for name in CLASSES}, unlabelled=6)
    start_worker_fs()
    with TestClient(create_app()) as client:
        admin = token_headers(client, "expert")
        run = {**TINY, "method": "supervised", "auto_promote": True}
        run_id = client.post("/api/v1/training-runs", json=run, headers=admin).json()["id"]
        body = wait_for(
            lambda: (b := run_status(client, admin, run_id))["status"] in ("succeeded", "failed") and b,
            120,
            message="the run over the filesystem broker",
        )
        assert body["status"] == "succeeded", body["error"]
        (model,) = client.get("/api/v1/models", headers=admin).json()
        assert model["id"] == body["model_version_id"] and model["is_active"]  # auto-promoted: no model yet
        wait_for(
            lambda: client.get("/api/v1/models", headers=admin).json()[0]["scoring"]["status"] == "ready",
            90,
            message="scoring on SQLite",
        )
        queue = client.get("/api/v1/queue", headers=admin).json()
        assert len(queue) == 6 and all(entry["reason"] for entry in queue)
    assert list((tmp_path / "broker").iterdir())
