"""scripts/ood_dev.py: every network method alone and in each combination with morphology, on the unknown
cells that the eight-class test set leaves out, against the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ssl as bench_ssl
from ml.ood import NETWORK_METHODS
from tests.support.cli import load_script, tiny_known_and_unknown


def test_the_study_scores_every_base_and_combination_on_the_cells_the_test_set_leaves_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, other, checkpoint = tiny_known_and_unknown(tmp_path, known_test=2, unknown=6)
    monkeypatch.setattr(bench_ssl, "EXTRA_TEST_PER_CLASS", 2)
    monkeypatch.setattr(bench_ssl, "EXTRA_VALIDATION_PER_CLASS", 1)

    out = load_script("ood_dev").study(checkpoint, pbc=data, other=other)
    assert out["unknown"].endswith("(n = 8)")  # 6 a class, less the 2 the test set keeps
    pairs = {(r["base"], r["combination"]) for r in out["rows"]}
    combinations = ("network alone", "morph-sum", "morph-max", "morph-excess")
    assert pairs == {(b, c) for b in NETWORK_METHODS for c in combinations}
    for row in out["rows"]:
        assert set(row["auroc"]) == {"ig", "platelet"} and all(0.0 <= a <= 1.0 for a in row["auroc"].values())
    json.dumps(out)  # what --json writes
