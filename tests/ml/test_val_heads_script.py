"""scripts/val_heads.py: a checkpoint's possible classifiers on the validation split, never the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ml.ood import _Reference
from tests.support.cli import load_script, tiny_known_and_unknown


def _reference_state(features: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    ref = _Reference.fit(features, y, n_classes)
    return {
        "means": torch.from_numpy(ref.means.astype(np.float32)),
        "precision": torch.from_numpy(ref.precision.astype(np.float32)),
        "prototypes": torch.from_numpy(ref.prototypes.astype(np.float32)),
        "bank": torch.from_numpy(ref.bank.astype(np.float16)),
        "bank_y": torch.from_numpy(ref.bank_y),
    }


def test_each_feature_classifier_sends_a_cell_to_the_cluster_it_lies_in():
    rng = np.random.default_rng(0)
    centres = np.array([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]])
    y = np.repeat(np.arange(3), 30)
    features = centres[y] + rng.normal(size=(90, 4))
    state = _reference_state(features, y, 3)
    new_y = np.array([2, 0, 1, 1, 0])
    scores = load_script("val_heads").feature_scores(centres[new_y] + rng.normal(scale=0.5, size=(5, 4)), state)
    assert set(scores) == {"class-means", "prototypes", "knn20"}
    for name, s in scores.items():
        assert s.shape == (5, 3)
        assert (s.argmax(axis=1) == new_y).all(), name


def test_the_heads_of_a_trained_checkpoint_read_only_the_validation_split(tmp_path: Path, monkeypatch):
    data, _, checkpoint = tiny_known_and_unknown(tmp_path)
    script = load_script("val_heads")
    read: list[str] = []
    real = script.load_manifest_split
    monkeypatch.setattr(
        script, "load_manifest_split", lambda d, split, *a, **k: read.append(split) or real(d, split, *a, **k)
    )
    out = tmp_path / "heads.json"
    monkeypatch.setattr("sys.argv", ["val_heads.py", str(checkpoint), "--data", str(data), "--json", str(out)])
    script.main()
    assert read == ["validation"]
    accuracies = json.loads(out.read_text())[str(checkpoint)]
    assert {"teacher/1", "teacher/8", "student/8", "teacher+student/8", "class-means/8", "knn20/8"} <= set(accuracies)
    assert all(0.0 <= a <= 100.0 for a in accuracies.values())
