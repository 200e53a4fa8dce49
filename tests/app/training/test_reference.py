"""The reference model: install, show, uninstall; its suggestions marked as the reference's until a
model of the lab's own is promoted; the first retrain warm-starts from it (on by default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.db import session_scope
from app.main import create_app
from app.models import ModelVersion, Prediction
from app.training import service
from cli.main import app as cli
from ml.checkpoint import make_checkpoint, save_checkpoint
from ml.config import make_config
from ml.model import ModelConfig, build_model
from tests.support.database import use_database
from tests.support.factories import make_cells, make_user
from tests.support.http import token_headers

NAMES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]


def write_reference(path: Path, names: list[str] = NAMES, width: float = 0.125, size: int = 32) -> Path:
    """An untrained network of the tiny profile's shape, saved as a reference checkpoint with a card beside."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=len(names), width=width, image_size=size))
    checkpoint = make_checkpoint(
        student=model,
        teacher=model,
        model_config=model.config,
        train_config=make_config("tiny", "supervised"),
        class_names=names,
    )
    save_checkpoint(path, checkpoint)
    card = {"data": {"name": "generated", "licence": "CC0", "n_train": 0}, "class_names": names, "metrics": {}}
    path.with_name(path.stem + ".card.json").write_text(json.dumps(card))
    return path


@pytest.fixture
def lab(any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    artefacts = tmp_path / "artefacts"
    use_database(any_db_url, monkeypatch, artefact_dir=str(artefacts), broker_dir=str(tmp_path / "broker"))
    with TestClient(create_app()) as client:
        yield client, artefacts


def invoke(*args: str):
    return CliRunner().invoke(cli, ["reference", *args])


def predict_all(model_id: int, cell_ids: list[int], label: str = "lymphocyte", confidence: float = 0.9) -> None:
    with session_scope() as session:
        names = list(session.get(ModelVersion, model_id).class_names)
        for cell_id in cell_ids:
            rest = (1 - confidence) / (len(names) - 1)
            session.add(
                Prediction(
                    model_version_id=model_id,
                    cell_id=cell_id,
                    probs=[confidence if n == label else rest for n in names],
                    predicted=label,
                    confidence=confidence,
                    entropy=0.3,
                    margin=0.5,
                    filter_outcome="rejected",
                )
            )


def next_suggestion(client: TestClient, headers: dict) -> dict | None:
    response = client.get("/api/v1/queue/next", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["suggestion"]


def test_install_serves_marked_suggestions_until_a_local_model_is_promoted(lab, tmp_path: Path) -> None:
    client, artefacts = lab
    source = write_reference(tmp_path / "made" / "ref.pt")
    make_user("expert", role="admin")
    make_user("cyto")
    cyto = token_headers(client, "cyto")
    cells = make_cells(3)
    assert next_suggestion(client, cyto) is None  # a new lab: no model, no suggestion

    result = invoke("install", str(source))
    assert result.exit_code == 0, result.output
    assert "active" in result.output
    with session_scope() as session:
        reference = service.reference_model(session=session)
        assert reference is not None and reference.is_active and reference.origin == "reference"
        reference_id, installed_path = reference.id, Path(reference.artefact_path)
        assert list(reference.class_names) == NAMES
        assert reference.metrics["reference_card"]["data"]["licence"] == "CC0"
    assert installed_path.parent == (artefacts / "reference").resolve() and installed_path.is_file()
    assert installed_path.read_bytes() == source.read_bytes()
    queued = list((tmp_path / "broker").rglob("*.msg"))
    assert queued, "scoring of the unlabelled cells was enqueued"

    predict_all(reference_id, cells)  # what the worker's scoring writes
    suggestion = next_suggestion(client, cyto)
    assert suggestion["label"] == "lymphocyte" and suggestion["source"] == "reference"
    page = client.get("/label", headers=cyto)
    assert page.status_code == 200 and 'id="suggestion-source"' in page.text

    shown = json.loads(invoke("show", "--json").output)
    assert shown["model_version"] == reference_id and shown["is_active"] and not shown["local_model_exists"]
    again = invoke("install", str(source))
    assert again.exit_code == 2 and "installed already" in again.output

    # the lab's own model is promoted: its suggestions are the lab's, the reference stays installed
    with session_scope() as session:
        local = ModelVersion(artefact_path="/nonexistent/run-1.pt", class_names=NAMES, is_active=False)
        session.add(local)
        session.flush()
        local_id = local.id
    predict_all(local_id, cells, label="monocyte")
    with session_scope() as session:
        service.promote(session=session, model_id=local_id)
    suggestion = next_suggestion(client, cyto)
    assert suggestion["label"] == "monocyte" and suggestion["source"] == "local"
    models = client.get("/api/v1/models", headers=token_headers(client, "expert")).json()
    assert {m["id"]: m["origin"] for m in models} == {reference_id: "reference", local_id: "local"}

    result = invoke("uninstall")
    assert result.exit_code == 0, result.output
    assert not installed_path.exists()
    with session_scope() as session:
        assert service.reference_model(session=session) is None
        assert session.get(ModelVersion, reference_id) is None
        assert service.active_model(session=session).id == local_id
        assert session.query(Prediction).filter_by(model_version_id=reference_id).count() == 0
    assert invoke("uninstall").exit_code == 2
    assert json.loads(invoke("show", "--json").output) is None


def test_install_beside_a_local_model_leaves_it_active(lab, tmp_path: Path) -> None:
    client, _ = lab
    with session_scope() as session:
        local = ModelVersion(artefact_path="/nonexistent/run-1.pt", class_names=NAMES, is_active=False)
        session.add(local)
        session.flush()
        service.promote(session=session, model_id=local.id)
        local_id = local.id
    result = invoke("install", str(write_reference(tmp_path / "ref.pt")))
    assert result.exit_code == 0, result.output
    assert "is active, so it serves no suggestions" in result.output
    with session_scope() as session:
        assert service.active_model(session=session).id == local_id
        assert not service.reference_model(session=session).is_active
    # uninstalling a reference that was active leaves no model active
    assert invoke("uninstall").exit_code == 0


def test_install_refuses_a_file_that_is_not_a_checkpoint(lab, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = invoke("install", str(bad))
    assert result.exit_code == 2 and "not a leukolab checkpoint" in result.output
    assert invoke("install", str(tmp_path / "missing.pt")).exit_code == 2
    with session_scope() as session:
        assert service.reference_model(session=session) is None
