"""``python -m bench.cli pack``: the copy a GPU machine receives holds the same cells and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.cli import app
from ml.data import load_manifest_split, read_manifest
from ml.splits import VALIDATION
from tests.support.images import make_manifest_dataset


def test_a_packed_copy_loads_as_the_same_model_inputs_and_splits(tmp_path: Path) -> None:
    data = make_manifest_dataset(tmp_path / "cells", train_per_class=8, test_per_class=2, size=48)
    out = tmp_path / "packed" / "cells"
    result = CliRunner().invoke(app, ["pack", "--data", str(data), "--out", str(out), "--size", "32"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out) == read_manifest(data)
    for split in ("train", VALIDATION, "test"):
        original, packed = load_manifest_split(data, split, 32), load_manifest_split(out, split, 32)
        assert packed.files == original.files and packed.y.tolist() == original.y.tolist()
        # PNG files stay lossless: the network sees exactly what it saw from the original tiles
        assert np.array_equal(packed.x.numpy(), original.x.numpy())


def test_pack_refuses_to_write_over_its_own_data(tmp_path: Path) -> None:
    data = make_manifest_dataset(tmp_path / "cells", train_per_class=2, test_per_class=1)
    with pytest.raises(ValueError, match="is the data set itself"):
        from bench.pack import pack

        pack(data, data)
