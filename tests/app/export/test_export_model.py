"""Model export through the app: the worker's files at registration, the Models page's download, the CLI."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.db import session_scope
from app.main import create_app
from app.models import ModelVersion
from cli.main import app as leukolab_cli
from ml.checkpoint import load_model, make_checkpoint, save_checkpoint
from ml.config import make_config
from ml.model import ModelConfig, build_model
from tests.support.factories import make_user
from tests.support.http import token_headers
from worker.exports import write_registered_exports

CLASSES = ["neutrophil", "lymphocyte", "eosinophil"]
METRICS = {
    "accuracy": 0.75,
    "macro_f1": 0.7,
    "per_class": {name: {"precision": 0.7, "recall": 0.75, "f1": 0.72, "support": 4} for name in CLASSES},
    "data": {"n_train": 12, "n_val": 4},
    "funnel": {"unlabelled": 50, "set1": 30, "set2": 22},
}


@pytest.fixture
def version(pg_db_url: str, tmp_path: Path) -> dict:
    """An active model version whose artefact is a real (small) checkpoint."""
    torch.manual_seed(1)
    config = ModelConfig(n_classes=3, width=0.125, image_size=32)
    checkpoint = make_checkpoint(
        student=build_model(config),
        teacher=build_model(config),
        model_config=config,
        train_config=make_config("tiny", "mean-teacher+lp"),
        class_names=CLASSES,
    )
    artefact = tmp_path / "artefacts" / "run-1.pt"
    save_checkpoint(artefact, checkpoint)
    with session_scope() as session:
        row = ModelVersion(artefact_path=str(artefact), class_names=CLASSES, metrics=METRICS, is_active=True)
        session.add(row)
        session.flush()
        model_id = row.id
    make_user("ada", role="admin")
    make_user("ana")
    return {"id": model_id, "checkpoint": checkpoint}


def _probs(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_models_page_serves_the_exports_written_at_registration(version: dict, tmp_path: Path) -> None:
    model_id = version["id"]
    with TestClient(create_app()) as client:
        admin = token_headers(client, "ada")
        url = f"/admin/models/{model_id}/export.zip"
        missing = client.get(url, params={"format": "onnx"}, headers=admin)
        assert missing.status_code == 404 and "leukolab export model" in missing.json()["detail"]

        write_registered_exports(model_id)

        assert f'href="{url}?format=onnx"' in client.get("/admin/models", headers=admin).text
        assert client.get(url, params={"format": "onnx"}, headers=token_headers(client, "ana")).status_code == 403
        response = client.get(url, params={"format": "onnx"}, headers=admin)
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
        scripted = client.get("/api/v1/export/model", params={"format": "torchscript"}, headers=admin)
        assert scripted.status_code == 200

    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == [f"model-v{model_id}.card.json", f"model-v{model_id}.onnx"]
        card = json.loads(archive.read(f"model-v{model_id}.card.json"))
        network = archive.read(f"model-v{model_id}.onnx")
    assert card["model_version"] == model_id and card["classes"] == CLASSES
    assert card["labels"] == {"expert": 16, "pseudo": 22}
    assert card["metrics"]["per_class"] == METRICS["per_class"]
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32)).astype(np.float32)
    (logits,) = onnxruntime.InferenceSession(network, providers=["CPUExecutionProvider"]).run(None, {"image": x})
    with torch.no_grad():
        expected = torch.softmax(load_model(version["checkpoint"])(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(_probs(logits) - expected).max() <= 1e-4

    with zipfile.ZipFile(io.BytesIO(scripted.content)) as archive:
        assert sorted(archive.namelist()) == [f"model-v{model_id}.card.json", f"model-v{model_id}.pt"]
        loaded = torch.jit.load(io.BytesIO(archive.read(f"model-v{model_id}.pt")))
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(loaded(torch.from_numpy(x)), 1).numpy(), expected, atol=1e-5)


def test_cli_exports_a_model_version_with_its_card(version: dict, tmp_path: Path) -> None:
    out = tmp_path / "export" / "wbc.onnx"

    result = CliRunner().invoke(leukolab_cli, ["export", "model", str(out), "--format", "onnx"])  # the active one

    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "export" / "wbc.card.json").read_text())
    assert card["file"] == "wbc.onnx" and card["model_version"] == version["id"]
    assert card["training_config"]["method"] == "mean-teacher+lp" and card["labels"]["expert"] == 16
    assert onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_outputs()[0].name == "logits"

    result = CliRunner().invoke(leukolab_cli, ["export", "model", str(tmp_path / "x.pt"), "--version", "999"])
    assert result.exit_code == 2 and "no model version with id 999" in result.output
    result = CliRunner().invoke(leukolab_cli, ["export", "model", str(tmp_path / "x.tflite"), "--format", "tflite"])
    assert result.exit_code == 2 and "unknown format" in result.output
