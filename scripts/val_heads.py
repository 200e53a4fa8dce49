"""Which of a trained checkpoint's possible classifiers predicts the PBC validation split best: the teacher
(what the product serves), the student, their mean, each over one view and eight, and classifiers on the
teacher's features fitted by its OOD reference (class means with the shared precision, cosine prototypes, a
20-nearest-neighbour vote on the reference bank), alone and blended with the softmax.

    python scripts/val_heads.py CHECKPOINT [CHECKPOINT ...] [--json OUT]

The checkpoint needs its OOD state (``bench ssl --checkpoint`` of a run with ``fit_ood``). Validation cells
only: the test split is never read, so a head chosen here can be reported on it once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml.checkpoint import load_checkpoint, load_model  # noqa: E402
from ml.data import load_manifest_split  # noqa: E402
from ml.infer import predict  # noqa: E402
from ml.splits import VALIDATION  # noqa: E402

KNN_K = 20


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def feature_scores(features: np.ndarray, ood: dict) -> dict[str, np.ndarray]:
    """N×C scores (higher: that class) of the classifiers that the OOD reference ``ood`` defines."""
    means, precision = ood["means"].double().numpy(), ood["precision"].double().numpy()
    bank, bank_y = ood["bank"].float().numpy(), ood["bank_y"].numpy()
    centred = features.astype(np.float64)[:, None, :] - means[None]
    unit = _unit(features.astype(np.float32))
    nearest = np.argsort(-(unit @ bank.T), axis=1)[:, :KNN_K]
    return {
        "class-means": -0.5 * np.einsum("ncd,de,nce->nc", centred, precision, centred),
        "prototypes": unit @ ood["prototypes"].numpy().T,
        f"knn{KNN_K}": np.stack([(bank_y[nearest] == c).sum(axis=1) for c in range(len(means))], axis=1) / KNN_K,
    }


def heads(checkpoint: dict, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every head's N×C scores on the uint8 images ``x``."""
    out: dict[str, np.ndarray] = {}
    teacher, student = load_model(checkpoint, which="teacher"), load_model(checkpoint, which="student")
    teachers = {}
    for views, tta in (("1", False), ("8", True)):
        t, s = predict(teacher, x, tta=tta), predict(student, x, tta=tta)
        out[f"teacher/{views}"], out[f"student/{views}"] = t.probs, s.probs
        out[f"teacher+student/{views}"] = (t.probs + s.probs) / 2
        teachers[views] = t
    teacher8 = teachers["8"]  # the served head: the teacher over eight views
    for name, scores in feature_scores(teacher8.features, checkpoint["ood"]).items():
        out[f"{name}/8"] = scores
        if name == "class-means":
            for w in (0.25, 0.5):
                out[f"teacher+{name} {w}/8"] = (1 - w) * np.log(teacher8.probs + 1e-9) + w * _log_softmax(scores)
        else:
            for w in (0.25, 0.5):
                out[f"teacher+{name} {w}/8"] = (1 - w) * teacher8.probs + w * scores
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pbc")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        if "ood" not in checkpoint:
            raise SystemExit(f"{path}: no OOD state; train it with fit_ood on")
        val = load_manifest_split(
            args.data, VALIDATION, checkpoint["model_config"]["image_size"], class_names=checkpoint["class_names"]
        )
        y = val.y.numpy()
        results[str(path)] = {
            name: round(100 * float((scores.argmax(axis=1) == y).mean()), 1)
            for name, scores in heads(checkpoint, val.x).items()
        }
        print(path, json.dumps(results[str(path)]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
