"""How the OOD score's network method and its combination with morphology fare on unknown cells kept for
development: the study behind ``ml.ood.COMBINED_RULE``.

    python scripts/ood_dev.py CHECKPOINT [--json OUT]

Known cells: the PBC validation split (never trained on). Unknown cells: the pbc-other cells that
``bench ssl --extra-classes`` does not test on (its validation and train roles, 200 a class). The reported
figures (``bench ood --held-out-only``) use the other 100 a class and the PBC test split, which this never
reads. The reference is fitted as ``bench ood --refit`` fits it (a seeded draw of the train split, labelled
by the network's own predictions), and every (combination, base) pair is scored with ``ml.ood``'s own code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ssl import extra_class_rows  # noqa: E402
from ml.checkpoint import load_checkpoint, load_model  # noqa: E402
from ml.config import config_from_dict  # noqa: E402
from ml.data import load_images, load_manifest_split, read_manifest  # noqa: E402
from ml.infer import predict  # noqa: E402
from ml.morphology import describe  # noqa: E402
from ml.ood import NETWORK_METHODS, _MorphReference, _Parts, _Reference, auroc  # noqa: E402
from ml.splits import VALIDATION  # noqa: E402
from ml.train import ood_reference  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
COMBINATIONS = ("morph-sum", "morph-max", "morph-excess")


def study(checkpoint_path: Path, pbc: Path = DATA / "pbc", other: Path = DATA / "pbc-other") -> dict:
    checkpoint = load_checkpoint(checkpoint_path)
    model = load_model(checkpoint).eval()
    names = list(checkpoint["class_names"])
    size = model.config.image_size
    config = config_from_dict(checkpoint.get("train_config"))
    train = load_manifest_split(pbc, "train", size, class_names=names)
    ref_x, _ = ood_reference(train.x, torch.zeros(len(train.x)), 0, config.seed, config.ood_reference_cells)
    known = load_manifest_split(pbc, VALIDATION, size, class_names=names)
    unknown_names = sorted({r["label"] for r in read_manifest(other)})
    roles = extra_class_rows(other, unknown_names)
    files = roles["validation"][0] + roles["train"][0]
    unknown_y = np.asarray(roles["validation"][1] + roles["train"][1])
    unknown_x = load_images([other / f for f in files], size)
    p_ref, p_known, p_unknown = (predict(model, x, layers=True) for x in (ref_x, known.x, unknown_x))
    ref_y = p_ref.probs.argmax(axis=1)
    ref = _Reference.fit(p_ref.features, ref_y, len(names), p_ref.layers)
    morph = _MorphReference.fit(describe(ref_x), ref_y, len(names))
    known_parts = _Parts(p_known.logits, p_known.features, describe(known.x), ref, morph, p_known.layers)
    unknown_parts = _Parts(p_unknown.logits, p_unknown.features, describe(unknown_x), ref, morph, p_unknown.layers)
    classes = np.arange(len(names))
    rows = []
    for base in NETWORK_METHODS:
        for method in (None, *COMBINATIONS):
            stats = known_parts.stats(method or base, base, classes, np.ones(len(known.x), bool))
            a = known_parts.score(method or base, base, classes, *stats)
            b = unknown_parts.score(method or base, base, classes, *stats)
            per_class = {name: auroc(a, b[unknown_y == c]) for c, name in enumerate(unknown_names)}
            rows.append({"base": base, "combination": method or "network alone", "auroc": per_class})
    return {
        "checkpoint": str(checkpoint_path),
        "known": f"{pbc.name} validation split (n = {len(known.x)})",
        "unknown": f"{other.name} outside the eight-class test set (n = {len(unknown_x)})",
        "rows": rows,
    }


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    out = study(Path(argv[0]))
    for row in out["rows"]:
        figures = " ".join(f"{v:.3f}" for v in row["auroc"].values())
        print(f"{row['base']:12s} {row['combination']:14s} {figures}  mean {np.mean(list(row['auroc'].values())):.3f}")
    if "--json" in argv:
        path = Path(argv[argv.index("--json") + 1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
