"""``leukolab bench ssl`` on a tiny generated dataset with a manifest: the JSON it writes, the
validation split it trains against, and the single read of the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ml.infer
import ml.train
from bench import ssl as bench_ssl
from cli.main import app
from ml.config import make_config
from ml.data import load_manifest_split, read_manifest
from ml.splits import validation_files
from tests.support.images import make_manifest_dataset

SETTINGS = ["pretrain_epochs=1", "epochs=1", "round_epochs=1", "steps_per_epoch=4", "batch_size=12"]
SETTINGS += ["labelled_per_batch=6", "tta=true", "entropy_threshold=0.5"]


def _bench(data: Path, out: Path, *extra: str) -> tuple[dict, str]:
    args = ["bench", "ssl", "--data", str(data), "--labels-per-class", "3", "--method", "mean-teacher+lp"]
    args += ["--profile", "tiny", "--seed", "1", "--json", str(out), *extra]
    for setting in SETTINGS:
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_bench_ssl_reports_validation_and_test_accuracy_funnel_and_the_single_view_figure(tmp_path: Path) -> None:
    # 12 train cells per class: 3 (a quarter) go to the validation split, 9 stay to train on
    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    report, output = _bench(data, tmp_path / "run.json")
    assert (report["n_labelled"], report["n_unlabelled"], report["n_validation"], report["n_test"]) == (9, 18, 9, 12)
    assert 0.0 <= report["accuracy"] <= 1.0
    assert 0.0 <= report["val_accuracy"] <= 1.0 and 0.0 <= report["val_macro_f1"] <= 1.0
    assert 0.0 <= report["val_single_view_accuracy"] <= 1.0
    assert sum(pc["support"] for pc in report["val_per_class"].values()) == 9
    assert f"val accuracy {100 * report['val_accuracy']:.2f} %" in output
    assert f"test accuracy {100 * report['accuracy']:.2f} %" in output
    assert sum(map(sum, report["confusion"])) == 12
    assert set(report["per_class"]) == {"basophil", "eosinophil", "lymphocyte"}
    funnel = report["pseudo_labels"]["funnel"]
    assert funnel["unlabelled"] == 18 and funnel["set1"] >= funnel["set2"]
    config = report["config"]
    assert (config["pretrain_epochs"], config["tta"], config["method"]) == (1, True, "mean-teacher+lp")
    # the pre-training, then the mean teacher's two rounds, in the learning curve, read on validation
    assert [h["algorithm"] for h in report["history"]] == ["supervised", "mean-teacher", "mean-teacher"]
    assert all(h["val_accuracy"] is not None for h in report["history"])
    # the OOD threshold is calibrated on the validation cells, not on the training cells
    assert report["ood"]["calibrated_on"] == "validation"


def test_validation_cells_are_neither_labelled_nor_unlabelled_nor_test(tmp_path: Path) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    config = make_config("tiny", "mean-teacher+lp")
    split = bench_ssl.load_split(data, None, config, per_class=3, seed=2)
    held_out = validation_files(data, read_manifest(data))
    assert set(split.validation.files) == held_out and len(held_out) == 9
    labelled = {split.train_set.files[i] for i in split.labelled}
    unlabelled = {split.train_set.files[i] for i in split.unlabelled}
    assert len(labelled) == 9 and len(unlabelled) == 18
    assert not (labelled | unlabelled) & held_out
    assert not (labelled | unlabelled | held_out) & set(split.test_set.files)
    # every train row is in exactly one role
    train_rows = {r["file"] for r in read_manifest(data) if r["split"] == "train"}
    assert labelled | unlabelled | held_out == train_rows


def test_the_test_split_is_predicted_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    test_x = load_manifest_split(data, "test", 32).x
    seen = {"test": 0, "other": 0}
    real_predict = ml.infer.predict

    def counting_predict(model, x, *args, **kwargs):
        seen["test" if x.shape == test_x.shape and torch.equal(x.cpu(), test_x) else "other"] += 1
        return real_predict(model, x, *args, **kwargs)

    monkeypatch.setattr(ml.infer, "predict", counting_predict)
    monkeypatch.setattr(ml.train, "predict", counting_predict)
    _bench(data, tmp_path / "run.json")
    assert seen["test"] == 1
    assert seen["other"] > 0  # the counter sees the training's own predictions too
