"""``leukolab bench pretrain`` and ``bench ssl --init`` on a tiny generated data set with a manifest."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from ml.checkpoint import load_checkpoint
from tests.bench.test_ssl import SETTINGS
from tests.support.images import make_manifest_dataset


def _pretrain(data: Path, tmp_path: Path, *extra: str):
    args = ["bench", "pretrain", "--data", str(data), "--out", str(tmp_path / "pre.pt"), "--profile", "tiny"]
    args += ["--epochs", "2", "--batch-size", "9", "--json", str(tmp_path / "pre.json"), *extra]
    return CliRunner().invoke(app, args)


def test_pretrain_reads_the_train_split_less_validation_and_ssl_starts_from_it(tmp_path: Path) -> None:
    # 12 train cells per class, 3 of them validation: 27 cells to pre-train on, 3 steps of 9 an epoch
    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    result = _pretrain(data, tmp_path)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "pre.json").read_text())
    assert record["n_images"] == 27
    assert [epoch["epoch"] for epoch in record["history"]] == [1, 2]
    assert record["config"]["batch_size"] == 9 and record["config"]["epochs"] == 2
    checkpoint = load_checkpoint(tmp_path / "pre.pt")
    assert checkpoint["class_names"] == [] and checkpoint["step"] == 6

    args = ["bench", "ssl", "--data", str(data), "--labels-per-class", "3", "--profile", "tiny", "--seed", "1"]
    args += ["--json", str(tmp_path / "run.json"), "--init", str(tmp_path / "pre.pt")]
    for setting in SETTINGS:
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["init"] == str(tmp_path / "pre.pt")
    assert 0.0 <= report["val_accuracy"] <= 1.0


def test_ssl_refuses_a_pretrained_network_of_another_profile(tmp_path: Path) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    assert _pretrain(data, tmp_path).exit_code == 0
    args = ["bench", "ssl", "--data", str(data), "--labels-per-class", "3", "--profile", "cpu"]
    args += ["--init", str(tmp_path / "pre.pt"), "--json", str(tmp_path / "run.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "pre-train with this profile" in result.output
    assert not (tmp_path / "run.json").exists()


def test_pretrain_adds_only_the_train_cells_of_the_extra_classes(tmp_path: Path, monkeypatch) -> None:
    from bench import ssl as bench_ssl

    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    extra = make_manifest_dataset(tmp_path / "other", classes=("ig", "platelet"), train_per_class=4, test_per_class=2)
    monkeypatch.setattr(bench_ssl, "EXTRA_TEST_PER_CLASS", 2)
    monkeypatch.setattr(bench_ssl, "EXTRA_VALIDATION_PER_CLASS", 1)
    result = _pretrain(data, tmp_path, "--extra-classes", str(extra))
    assert result.exit_code == 0, result.output
    # 27 train cells of the manifest's classes, and of each extra class's 6 cells 2 test, 1 validation, 3 train
    assert json.loads((tmp_path / "pre.json").read_text())["n_images"] == 27 + 2 * 3
    # the network is built for the five classes bench ssl --extra-classes trains on
    assert load_checkpoint(tmp_path / "pre.pt")["model_config"]["n_classes"] == 5
