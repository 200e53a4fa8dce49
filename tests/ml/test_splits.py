"""The fixed validation split: carved once, kept in a file, never overlapping train or test."""

from __future__ import annotations

import csv

import pytest

from ml import splits
from ml.data import load_manifest_split, read_manifest
from tests.support.database import SHARED_DATA
from tests.support.images import make_manifest_dataset


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "SPLITS_DIR", tmp_path / "split_files")
    return make_manifest_dataset(tmp_path / "cells", train_per_class=20, test_per_class=4)


def test_validation_is_carved_from_train_and_left_out_of_it(dataset):
    train = load_manifest_split(dataset, "train", 32)
    validation = load_manifest_split(dataset, "validation", 32, class_names=train.class_names)
    test = load_manifest_split(dataset, "test", 32, class_names=train.class_names)
    whole = load_manifest_split(dataset, "train+validation", 32, class_names=train.class_names)

    assert not set(train.files) & set(validation.files)
    assert not set(validation.files) & set(test.files)
    assert set(train.files) | set(validation.files) == set(whole.files)
    # a quarter of each class at most: 5 of 20
    assert sorted(validation.y.bincount().tolist()) == [5, 5, 5]


def test_the_file_pins_the_split_and_is_checked_against_the_manifest(dataset):
    carved = {r["file"] for r in splits.carve_validation(read_manifest(dataset))}
    path = splits.write_validation_file(dataset, read_manifest(dataset))
    assert splits.validation_files(dataset, read_manifest(dataset)) == carved

    # the file wins over the seed: a file naming other train rows moves the split with it
    rows = list(csv.DictReader(path.open()))
    other = next(r for r in read_manifest(dataset) if r["split"] == "train" and r["file"] not in carved)
    rows[0] = {"file": other["file"], "label": other["label"], "sha256": ""}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "sha256"])
        writer.writeheader()
        writer.writerows(rows)
    assert other["file"] in splits.validation_files(dataset, read_manifest(dataset))

    # a file that names a test row belongs to another data set: refused, naming the row
    test_row = next(r for r in read_manifest(dataset) if r["split"] == "test")
    rows[0] = {"file": test_row["file"], "label": test_row["label"], "sha256": ""}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "sha256"])
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(splits.ValidationSplitError, match=test_row["file"]):
        load_manifest_split(dataset, "train", 32)

    # a file listing none of this data set's cells belongs to another data set of the same name
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "sha256"])
        writer.writeheader()
        writer.writerow({"file": "elsewhere/cell.jpg", "label": "basophil", "sha256": ""})
    assert splits.validation_files(dataset, read_manifest(dataset)) == carved


@pytest.mark.shared_data
def test_the_pbc_file_matches_the_shared_manifest():
    root = SHARED_DATA / "pbc"
    if not (root / "MANIFEST.csv").exists():
        pytest.skip("../shared/data/pbc is not here")
    files = splits.validation_files(root, read_manifest(root))
    assert len(files) == 250
    assert files == {r["file"] for r in splits.carve_validation(read_manifest(root))}
