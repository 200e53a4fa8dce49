"""``leukolab bench active`` on a tiny generated dataset: rounds, JSON and the comparison plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app
from tests.app.imagegen import make_cell_image, write_image

CLASSES = ("basophil", "eosinophil", "lymphocyte")


def make_manifest_dataset(root: Path, train_per_class: int = 16, test_per_class: int = 4) -> Path:
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(train_per_class + test_per_class):
            file = f"{name}/{name}_{i:03d}.png"
            write_image(root / file, make_cell_image(1000 * c + i, 48, c))
            rows.append({"file": file, "label": name, "split": "train" if i < train_per_class else "test"})
    with (root / "MANIFEST.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_bench_active_writes_rounds_and_a_plot(tmp_path: Path) -> None:
    data = make_manifest_dataset(tmp_path / "data")
    out = tmp_path / "results"
    runner = CliRunner()
    for strategy, budget in (("random", "6"), ("diverse", "9")):
        result = runner.invoke(
            app,
            [
                "bench",
                "active",
                "--data",
                str(data),
                "--budget",
                budget,
                "--step",
                "3",
                "--strategy",
                strategy,
                "--profile",
                "tiny",
                "--method",
                "supervised",
                "--epochs",
                "1",
                "--seed",
                "0",
                "--set",
                "batch_size=12",
                "--set",
                "steps_per_epoch=6",
                "--json",
                str(out / f"{strategy}.json"),
            ],
        )
        assert result.exit_code == 0, result.output
    report = json.loads((out / "diverse.json").read_text())
    assert [r["labels"] for r in report["rounds"]] == [6, 9]  # 2 per class, then +3 a round
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["rounds"])
    assert sum(report["rounds"][0]["picked_per_class"]) == 3
    assert set(report["rounds"][0]["reasons"]) <= {"high entropy", "low margin", "rejected by filters", "diverse"}
    assert "labels_to_reach_random_final" in report["comparison"]
    assert (out / "diverse.png").read_bytes().startswith(b"\x89PNG")
