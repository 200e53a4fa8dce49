"""``leukolab bench ssl --extra-classes`` and ``leukolab bench ood`` on tiny generated datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import ssl as bench_ssl
from cli.main import app
from tests.support.cli import tiny_known_and_unknown, tiny_ssl
from tests.support.database import SHARED_DATA
from tests.support.images import make_manifest_dataset

_ssl = tiny_ssl


def test_extra_classes_are_split_by_a_fixed_seed_into_test_and_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_manifest_dataset(tmp_path / "cells", train_per_class=6, test_per_class=2)
    extra = make_manifest_dataset(tmp_path / "other", classes=("ig", "platelet"), train_per_class=4, test_per_class=2)
    monkeypatch.setattr(bench_ssl, "EXTRA_TEST_PER_CLASS", 2)
    monkeypatch.setattr(bench_ssl, "EXTRA_VALIDATION_PER_CLASS", 1)
    report = _ssl(data, tmp_path / "run.json", "--extra-classes", str(extra), method="pseudo-single")
    assert report["class_names"] == ["basophil", "eosinophil", "ig", "lymphocyte", "platelet"]
    assert report["n_test"] == 3 * 2 + 2 * 2
    assert report["n_validation"] == 3 * 1 + 2 * 1
    assert report["n_labelled"] == 5 * 3
    # a sixth of each manifest class (1 of 6) is validation; the extra classes give 2 of 6 to test, 1 to validation
    assert report["n_labelled"] + report["n_unlabelled"] == 3 * (6 - 1) + 2 * (6 - 2 - 1)
    assert "ig" in report["per_class"] and "recall" in report["per_class"]["ig"]
    assert "ig" in report["val_per_class"]


def test_the_shared_extra_classes_split_is_fixed_and_disjoint() -> None:
    other = SHARED_DATA / "pbc-other"
    if not (other / "MANIFEST.csv").exists():
        pytest.skip("../shared/data/pbc-other is not here")
    names = ["erythroblast", "ig", "platelet"]
    rows = bench_ssl.extra_class_rows(other, names)
    counts = {role: [y.count(i) for i in range(3)] for role, (_, y) in rows.items()}
    assert counts == {"test": [100] * 3, "validation": [25] * 3, "train": [175] * 3}
    files = [set(f) for f, _ in rows.values()]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert bench_ssl.extra_class_rows(other, names)["test"] == rows["test"]  # the same cells every time


def test_bench_ood_reports_auroc_fpr_and_per_class(tmp_path: Path) -> None:
    data, other, checkpoint = tiny_known_and_unknown(tmp_path)
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["ood"]["method"] == "morph-excess"  # the network and morphology (ml.ood)
    out = tmp_path / "ood.json"
    args = ["bench", "ood", "--checkpoint", str(checkpoint), "--in", str(data), "--ood", str(other)]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    ood = json.loads(out.read_text())
    assert (ood["n_in"], ood["n_ood"]) == (12, 10)
    assert 0.0 <= ood["auroc"] <= 1.0 and 0.0 <= ood["fpr_at_95tpr"] <= 1.0
    assert set(ood["per_class"]) == {"ig", "platelet"}
    assert all(0.0 <= v["auroc"] <= 1.0 for v in ood["per_class"].values())

    result = CliRunner().invoke(app, [*args, "--refit", "--json", str(out)])
    assert result.exit_code == 0, result.output
    refit = json.loads(out.read_text())["refit"]
    assert refit["method"] == "morph-excess" and refit["base"] in report["ood"]["selection_auroc"]
    assert (refit["n_in"], refit["n_ood"]) == (12, 10) and set(refit["per_class"]) == {"ig", "platelet"}
    assert {"morph", "morph-sum", "morph-excess", "cosine", "knn-layers"} <= set(refit["all_methods_for_reference"])


def test_bench_ood_held_out_only_reports_the_eight_class_test_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, other, checkpoint = tiny_known_and_unknown(tmp_path)
    monkeypatch.setattr(bench_ssl, "EXTRA_TEST_PER_CLASS", 2)
    out = tmp_path / "ood.json"
    args = ["bench", "ood", "--checkpoint", str(checkpoint), "--in", str(data), "--ood", str(other)]
    result = CliRunner().invoke(app, [*args, "--held-out-only", "--json", str(out)])
    assert result.exit_code == 0, result.output
    ood = json.loads(out.read_text())
    assert ood["n_ood"] == 4 and {v["n"] for v in ood["per_class"].values()} == {2}
    assert ood["ood_cells"].startswith("the eight-class test set")
    test_files = set(bench_ssl.extra_class_rows(other, ["ig", "platelet"])["test"][0])
    assert len(test_files) == 4  # the same fixed draw bench ssl --extra-classes tests on
