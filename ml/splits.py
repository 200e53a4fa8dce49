"""The fixed validation split carved from a MANIFEST's train split.

Every choice of method, profile, threshold, augmentation or round is made on these cells; the
manifest's test split is read once per reported run. The split is a file in the repository
(``ml/split_files/<dataset>_validation.csv``), so it never moves with a seed, a thread count or a
change of code. ``python -m ml.splits ../shared/data/pbc`` writes it for a data set that has none.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

SPLITS_DIR = Path(__file__).resolve().parent / "split_files"
VALIDATION_PER_CLASS = 50
VALIDATION_SEED = 20261201
VALIDATION = "validation"
MAX_VALIDATION_SHARE = 4  # a class gives at most 1/4 of its train rows


class ValidationSplitError(ValueError):
    """The split file does not match the data set's manifest (another data set, or files changed)."""


def validation_file(root: str | Path) -> Path:
    return SPLITS_DIR / f"{Path(root).resolve().name}_validation.csv"


def carve_validation(
    rows: list[dict], per_class: int = VALIDATION_PER_CLASS, seed: int = VALIDATION_SEED
) -> list[dict]:
    """``per_class`` train rows of each label, drawn by ``seed`` from the rows sorted by file name;
    at most a quarter of a class's train rows, so a small data set keeps most of them to train on."""
    rng = np.random.default_rng(seed)
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["file"])
    chosen: list[dict] = []
    for label in sorted({r["label"] for r in train}):
        members = [r for r in train if r["label"] == label]
        picks = rng.choice(len(members), size=min(per_class, len(members) // MAX_VALIDATION_SHARE), replace=False)
        chosen.extend(members[i] for i in sorted(picks))
    return chosen


def write_validation_file(root: str | Path, rows: list[dict]) -> Path:
    path = validation_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "sha256"], lineterminator="\n")
        writer.writeheader()
        for row in carve_validation(rows):
            writer.writerow({"file": row["file"], "label": row["label"], "sha256": row.get("sha256", "")})
    return path


def validation_files(root: str | Path, rows: list[dict]) -> set[str]:
    """The manifest files of the validation split: from the repository's file when there is one
    and it lists this data set's files (checked against the manifest: a file of it missing or moved
    to another split is an error), else carved by the fixed seed."""
    path = validation_file(root)
    if not path.exists():
        return {r["file"] for r in carve_validation(rows)}
    by_file = {r["file"]: r for r in rows}
    with open(path, newline="") as f:
        listed = list(csv.DictReader(f))
    if not any(entry["file"] in by_file for entry in listed):
        # another data set that happens to share the folder's name: none of its files are listed
        return {r["file"] for r in carve_validation(rows)}
    for entry in listed:
        row = by_file.get(entry["file"])
        if row is None or row["split"] != "train" or row["label"] != entry["label"]:
            raise ValidationSplitError(
                f"{path}: {entry['file']} ({entry['label']}) is not a train row of {root}/MANIFEST.csv; "
                "the split file belongs to another version of the data set"
            )
        if entry.get("sha256") and row.get("sha256") and entry["sha256"] != row["sha256"]:
            raise ValidationSplitError(f"{path}: {entry['file']} has another sha256 than the manifest's")
    return {entry["file"] for entry in listed}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ml.splits DATA_DIR  (a folder with MANIFEST.csv)", file=sys.stderr)
        return 2
    with open(Path(argv[0]) / "MANIFEST.csv", newline="") as f:
        path = write_validation_file(argv[0], list(csv.DictReader(f)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
