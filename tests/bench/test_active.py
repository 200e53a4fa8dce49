"""``leukolab bench active`` on a tiny generated dataset: rounds, JSON and the comparison plot."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests.support.images import make_manifest_dataset


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
