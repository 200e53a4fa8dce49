"""The retrain task and the reference model: the first retrain starts from it (by default, and not
when asked not to), at a lower learning rate, and uses the lab's unlabelled cells too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.db import session_scope
from app.models import ModelVersion, User
from app.training import service
from cli.main import app as cli
from ml.checkpoint import load_checkpoint
from ml.config import make_config
from ml.retrain import warm_start_source
from tests.app.training.test_reference import write_reference
from tests.support.database import use_database
from tests.worker.conftest import CLASSES, insert_cells
from worker.training import run_retrain


def test_warm_start_source_prefers_the_labs_model_then_the_reference() -> None:
    local, reference = (7, "/a/run-7.pt"), (3, "/a/reference.pt")
    assert warm_start_source({}, local, reference) == local
    assert warm_start_source({"warm_start": False}, local, reference) == reference
    assert warm_start_source({"warm_start": False, "warm_start_from_reference": False}, local, reference) is None
    assert warm_start_source({}, None, reference) == reference  # on by default once a reference is installed
    assert warm_start_source({"warm_start_from_reference": None}, None, reference) == reference
    assert warm_start_source({"warm_start_from_reference": False}, None, reference) is None
    assert warm_start_source({}, None, None) is None


@pytest.fixture
def env(pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_database(pg_db_url, monkeypatch, artefact_dir=str(tmp_path / "artefacts"), broker_dir=str(tmp_path / "b"))
    return tmp_path


def _retrain(params: dict) -> tuple[dict, dict]:
    with session_scope() as session:
        admin = session.query(User).filter_by(username="expert").one()
        run = service.create_run(session=session, user=admin, method="lp+mean-teacher", profile="tiny", params=params)
        run_id = run.id
    assert run_retrain(run_id) == "succeeded"
    with session_scope() as session:
        run = service.get_run(session=session, run_id=run_id)
        version = session.get(ModelVersion, run.model_version_id)
        return dict(run.metrics), load_checkpoint(version.artefact_path)


@pytest.mark.worker
def test_first_retrain_starts_from_the_reference_and_uses_unlabelled_cells(env: Path) -> None:
    cells = insert_cells({name: 6 for name in CLASSES}, unlabelled=12)
    result = CliRunner().invoke(cli, ["reference", "install", str(write_reference(env / "ref.pt"))])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        reference_id = service.reference_model(session=session).id

    metrics, checkpoint = _retrain({"epochs": 1})
    data = metrics["data"]
    assert data["warm_started_from"] == reference_id and data["warm_started_from_reference"] is True
    assert data["fitted_to_lab"] is True  # BatchNorm statistics and head fitted to the lab before training
    assert data["n_unlabelled"] == len(cells["unlabelled"]) == 12
    assert metrics["funnel"]["unlabelled"] == 12  # the semi-supervised method saw the lab's unlabelled cells
    tiny = make_config("tiny", "lp+mean-teacher")
    assert checkpoint["train_config"]["lr"] == pytest.approx(tiny.lr * tiny.round_lr_scale)
    assert checkpoint["class_names"] == [n for n in ("neutrophil", "lymphocyte", "eosinophil")]
    # the reference's accuracy on the run's validation cells is the baseline the new model must beat
    assert metrics["baseline"]["model_version"] == reference_id

    metrics, checkpoint = _retrain({"epochs": 1, "warm_start_from_reference": False})
    assert metrics["data"]["warm_started_from"] is None and not metrics["data"]["warm_started_from_reference"]
    assert metrics["data"]["fitted_to_lab"] is False
    assert checkpoint["train_config"]["lr"] == pytest.approx(tiny.lr)


def test_a_reference_scores_with_batchnorm_statistics_of_the_labs_cells(env: Path, monkeypatch) -> None:
    from app.settings import get_settings
    from ml.adapt import LAB_ZOOMS, batchnorm_layers
    from worker.scoring import model_of, scoring_model

    monkeypatch.setenv("LEUKOLAB_REFERENCE_ADAPT_ZOOM", "true")  # off by default (docs/results/transfer.md)
    get_settings.cache_clear()
    insert_cells({name: 1 for name in CLASSES}, unlabelled=10)
    result = CliRunner().invoke(cli, ["reference", "install", str(write_reference(env / "ref.pt"))])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        reference = service.reference_model(session=session)
        ref_id, path = reference.id, reference.artefact_path
        assert reference.ood_threshold is None  # a threshold from the reference's own cells would hide everything
    plain, _ = model_of(path)
    adapted, meta = scoring_model(ref_id, path, "reference")
    assert meta["class_names"] == list(reference.class_names)
    first, first_adapted = batchnorm_layers(plain)[0], batchnorm_layers(adapted)[0]
    assert not torch.allclose(first.running_mean, first_adapted.running_mean)
    assert adapted.input_zoom in LAB_ZOOMS and plain.input_zoom == 1.0  # the zoom it was surest at
    # by default the BatchNorm scales and shifts are trained on the lab's cells too, and nothing else moves
    assert not torch.equal(first.weight, first_adapted.weight)
    norms = {f"{n}.{w}" for n, m in plain.named_modules() if m in batchnorm_layers(plain) for w in ("weight", "bias")}
    trained = dict(adapted.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in plain.named_parameters() if n not in norms)
    assert scoring_model(ref_id, path, "reference")[0] is adapted  # once per process and file
    assert scoring_model(ref_id, path, "local")[0] is plain
    monkeypatch.setenv("LEUKOLAB_REFERENCE_ADAPT_ZOOM", "false")
    monkeypatch.setenv("LEUKOLAB_REFERENCE_ADAPT_IM", "false")
    get_settings.cache_clear()
    later = os.path.getmtime(path) + 10
    os.utime(path, (later, later))  # a new file version: adapted again
    unzoomed = scoring_model(ref_id, path, "reference")[0]
    reloaded = model_of(path)[0]
    assert unzoomed.input_zoom == 1.0 and unzoomed is not reloaded
    assert not torch.allclose(batchnorm_layers(unzoomed)[0].running_mean, batchnorm_layers(reloaded)[0].running_mean)
    assert torch.equal(batchnorm_layers(unzoomed)[0].weight, batchnorm_layers(reloaded)[0].weight)  # statistics only
    monkeypatch.setenv("LEUKOLAB_REFERENCE_ADAPT_BATCHNORM", "false")
    get_settings.cache_clear()
    assert scoring_model(ref_id, path, "reference")[0] is reloaded
