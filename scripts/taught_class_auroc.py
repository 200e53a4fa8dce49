"""How well a network *taught* PBC's other three classes tells each from the five: the AUROC of its
probability for that class, on pbc-other's held-out cells (the test role of ``bench ssl
--extra-classes``, 100 a class) against the PBC test split (1,000 cells), on one view and over the
eight symmetries. An eight-class checkpoint's figure bounds what an unknown-class score of a five-class
network (issue 18, ``bench ood``) could reach with the same network and input size.

    python scripts/taught_class_auroc.py CKPT --json OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.ssl import extra_class_rows
from ml.checkpoint import load_checkpoint, load_model
from ml.data import load_images, load_manifest_split
from ml.infer import predict
from ml.ood import auroc

EXTRA = ("erythroblast", "ig", "platelet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an eight-class checkpoint (bench ssl --extra-classes)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pbc"))
    parser.add_argument("--extra", type=Path, default=Path("../shared/data/pbc-other"))
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    names = list(checkpoint["class_names"])
    missing = [c for c in EXTRA if c not in names]
    if missing:
        parser.error(f"{args.checkpoint} was not taught {', '.join(missing)}: train it with --extra-classes")
    size = int(checkpoint["model_config"]["image_size"])
    known = load_manifest_split(args.data, "test", size, class_names=names)
    files, y = extra_class_rows(args.extra, names)["test"]
    x_extra, y_extra = load_images([args.extra / f for f in files], size), np.asarray(y)
    model = load_model(checkpoint)
    columns = [names.index(c) for c in EXTRA]
    out: dict = {"checkpoint": str(args.checkpoint), "n_known": int(len(known.y))}
    for tta in (False, True):
        p_known, p_extra = predict(model, known.x, tta=tta).probs, predict(model, x_extra, tta=tta).probs
        rows = {}
        for name in EXTRA:
            c = names.index(name)
            cells = p_extra[y_extra == c]
            rows[name] = {
                "n": int(len(cells)),
                "auroc_own_class": auroc(p_known[:, c], cells[:, c]),
                "auroc_any_extra_class": auroc(p_known[:, columns].sum(1), cells[:, columns].sum(1)),
                "recall": float((cells.argmax(1) == c).mean()),
            }
        out["eight_views" if tta else "one_view"] = rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
