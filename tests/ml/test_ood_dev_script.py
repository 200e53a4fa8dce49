"""scripts/ood_dev.py: every network method alone and in each combination with morphology, on the unknown
cells that the eight-class test set leaves out, against the validation split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import ssl as bench_ssl
from cli.main import app
from ml.ood import NETWORK_METHODS
from tests.support.images import make_manifest_dataset

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("ood_dev", ROOT / "scripts" / "ood_dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_scores_every_base_and_combination_on_the_cells_the_test_set_leaves_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_manifest_dataset(tmp_path / "cells", train_per_class=8, test_per_class=2)
    other = make_manifest_dataset(tmp_path / "other", classes=("ig", "platelet"), train_per_class=0, test_per_class=6)
    checkpoint = tmp_path / "model.pt"
    args = ["bench", "ssl", "--data", str(data), "--labels-per-class", "3", "--method", "supervised"]
    args += ["--profile", "tiny", "--checkpoint", str(checkpoint), "--json", str(tmp_path / "run.json")]
    for setting in ("epochs=1", "steps_per_epoch=3", "batch_size=12", "labelled_per_batch=6"):
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(bench_ssl, "EXTRA_TEST_PER_CLASS", 2)
    monkeypatch.setattr(bench_ssl, "EXTRA_VALIDATION_PER_CLASS", 1)

    out = _script().study(checkpoint, pbc=data, other=other)
    assert out["unknown"].endswith("(n = 8)")  # 6 a class, less the 2 the test set keeps
    pairs = {(r["base"], r["combination"]) for r in out["rows"]}
    combinations = ("network alone", "morph-sum", "morph-max", "morph-excess")
    assert pairs == {(b, c) for b in NETWORK_METHODS for c in combinations}
    for row in out["rows"]:
        assert set(row["auroc"]) == {"ig", "platelet"} and all(0.0 <= a <= 1.0 for a in row["auroc"].values())
    json.dumps(out)  # what --json writes
