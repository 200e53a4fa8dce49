"""``leukolab bench active`` on a tiny generated dataset: a cold start, rounds of the product's
queue retrained through the worker's recipe, validation and test figures, and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.active import results_lines, target_lines
from cli.main import app
from ml import retrain as recipe
from ml.data import read_manifest
from ml.splits import validation_files
from tests.support.images import make_manifest_dataset

TRAIN_PER_CLASS = 30


def _run(data: Path, out: Path, strategy: str, method: str, *extra: str) -> dict:
    result = CliRunner().invoke(
        app,
        [
            "bench", "active", "--data", str(data), "--schedule", "6,9,12", "--strategy", strategy,
            "--profile", "tiny", "--method", method, "--epochs", "2", "--warm-epochs", "1", "--seed", "0",
            "--set", "batch_size=12", "--set", "steps_per_epoch=3", "--json", str(out / f"{strategy}.json"), *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / f"{strategy}.json").read_text())


def test_bench_active_cold_start_rounds_validation_and_test_and_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=TRAIN_PER_CLASS)
    n_validation = len(validation_files(data, read_manifest(data)))  # the fixed split (ml.splits)
    n_pool = 3 * TRAIN_PER_CLASS - n_validation
    out = tmp_path / "results"
    calls: list[dict] = []
    real = recipe.retrain

    def spy(*args, **kwargs):
        calls.append({"n_labels": len(args[1]), "n_unlabelled": len(args[2]), **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "retrain", spy)
    baseline = _run(data, out, "random", "supervised")
    assert baseline["cold_start"] == "random" and baseline["n_pool"] == n_pool >= 12
    assert baseline["n_validation"] == n_validation > 0 and baseline["n_test"] == 3 * 4
    product = _run(data, out, "diverse", "lp+mean-teacher")
    assert product["cold_start"] == "kmeans" and product["cold_features"] == "colour"

    for report in (baseline, product):
        assert [r["labels"] for r in report["rounds"]] == [6, 9, 12]
        for record in report["rounds"]:
            assert 0.0 <= record["val_accuracy"] <= 1.0 and 0.0 <= record["accuracy"] <= 1.0
            assert 0.0 <= record["macro_f1"] <= 1.0 and record["round_seconds"] > 0
            assert sum(record["per_class_labels"]) == record["labels"]
        assert [sum(r["picked_per_class"]) for r in report["rounds"][:-1]] == [3, 3]
    reasons = {"high entropy", "low margin", "rejected by filters", "diverse", "unlike any known class"}
    assert all(set(r["reasons"]) <= reasons for r in product["rounds"][:-1])

    # every round went through the worker's recipe: cold first, then warm-started from the round before
    assert len(calls) == 6 and [c["n_labels"] for c in calls] == [6, 9, 12] * 2
    for run in (calls[:3], calls[3:]):
        assert run[0]["active"] is None and run[0]["params"] == {"epochs": 2}
        assert [c["active"].id for c in run[1:]] == [0, 1] and all(c["params"] == {"epochs": 1} for c in run[1:])
        assert all(c["n_labels"] + c["n_unlabelled"] == n_pool for c in run)
    assert product["rounds"][1]["data"]["warm_started_from"] == 0

    png = out / "diverse.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert set(product["comparison"]) == {"diverse / kmeans"}  # only runs of its method and profile
    choice = {"labels": 6, "epochs": 2, "seeds": [0], "chosen_features": "random-net",
              "mean_val_accuracy": {"random": 0.5, "kmeans/colour": 0.6, "kmeans/random-net": 0.7}}  # fmt: skip
    (out / "cold_start_choice.json").write_text(json.dumps(choice))
    lines = results_lines(out, tmp_path / "loop.png", "loop.png", method="supervised", profile="tiny")
    page = "\n".join(lines)
    assert any(line.startswith("| 6 |") for line in lines) and "random / random" in page
    assert "kmeans/random-net 70.0 %" in page and "**random-net**" in page
    assert (tmp_path / "loop.png").read_bytes().startswith(b"\x89PNG")
    assert "more than one machine" not in page
    # a row per run: each round's test (validation) accuracy and labels per class, and the machine
    rows = [line for line in lines if line.startswith("| random / random |")]
    cells = [f"{100 * r['accuracy']:.1f} ({100 * r['val_accuracy']:.1f}) {r['per_class_labels']}"
             for r in baseline["rounds"]]  # fmt: skip
    assert rows == [f"| random / random | 0 | {' | '.join(cells)} | {baseline['device']} |"]
    # runs from two machines: the page says which ran where
    moved = {**baseline, "seed": 1, "device": "cpu: Another CPU, 2 threads"}
    (out / "random-s1.json").write_text(json.dumps(moved))
    page = "\n".join(results_lines(out, tmp_path / "loop.png", "loop.png", method="supervised", profile="tiny"))
    assert "more than one machine" in page and "cpu: Another CPU, 2 threads: random seed 1" in page
    assert f"{baseline['device']}: random seed 0;" in page


def test_bench_active_refuses_a_schedule_that_does_not_grow(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "active", "--data", str(tmp_path), "--schedule", "10,5", "--profile", "tiny"]
    )
    assert result.exit_code != 0 and "increase" in result.output


def test_bench_active_lab_default_retrains_every_round_with_the_default_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=TRAIN_PER_CLASS)
    params: list[dict] = []
    real = recipe.retrain

    def spy(*args, **kwargs):
        params.append(kwargs["params"])
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "retrain", spy)
    args = ["bench", "active", "--data", str(data), "--schedule", "6,9", "--profile", "tiny", "--method", "supervised",
            "--set", "batch_size=12", "--set", "steps_per_epoch=3", "--lab-default"]  # fmt: skip
    refused = CliRunner().invoke(app, [*args, "--epochs", "2"])
    assert refused.exit_code != 0 and "--lab-default" in refused.output and params == []
    result = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out.json").read_text())
    assert params == [{}, {}]  # a lab's retrain: the profile's own length, warm-started or not
    assert report["params_first_round"] == report["params_warm_rounds"] == {}
    assert report["rounds"][1]["data"]["warm_started_from"] == 0
    assert "epochs default for the cold round and default for warm rounds" in "\n".join(
        results_lines(tmp_path, tmp_path / "loop.png", "loop.png", method="supervised", profile="tiny")
    )


def test_a_run_cut_short_goes_on_with_resume_as_if_it_had_never_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=TRAIN_PER_CLASS)
    args = ["bench", "active", "--data", str(data), "--schedule", "6,9,12", "--strategy", "diverse",
            "--profile", "tiny", "--method", "supervised", "--epochs", "2", "--warm-epochs", "1", "--seed", "0",
            "--set", "batch_size=12", "--set", "steps_per_epoch=3"]  # fmt: skip
    whole_json, cut_json = tmp_path / "whole.json", tmp_path / "cut.json"
    assert CliRunner().invoke(app, [*args, "--json", str(whole_json)]).exit_code == 0
    whole = json.loads(whole_json.read_text())

    starts: list = []
    real = recipe.retrain

    def power_cut_in_round_three(*a, **kw):
        starts.append(kw["active"])
        if len(starts) == 3:
            raise RuntimeError("power cut")
        return real(*a, **kw)

    monkeypatch.setattr(recipe, "retrain", power_cut_in_round_three)
    cut_short = CliRunner().invoke(app, [*args, "--json", str(cut_json)])
    assert cut_short.exit_code != 0 and "stopped after 2 of 3 rounds" in cut_short.output
    assert "with --resume goes on" in " ".join(cut_short.output.split())
    cut = json.loads(cut_json.read_text())
    assert [r["labels"] for r in cut["rounds"]] == [6, 9] and len(cut["labelled"]) == 9

    starts.clear()
    result = CliRunner().invoke(app, [*args, "--json", str(cut_json), "--resume"])
    assert result.exit_code == 0, result.output
    resumed = json.loads(cut_json.read_text())
    assert len(starts) == 1 and starts[0].id == 1  # only round three trained, warm from round two's kept model
    # round two's record as written, and now what the queue picked after it
    assert [{k: r[k] for k in c} for r, c in zip(resumed["rounds"], cut["rounds"], strict=False)] == cut["rounds"]
    assert resumed["rounds"][1]["picked_per_class"] == whole["rounds"][1]["picked_per_class"]
    assert resumed["resumed_after_rounds"] == [2]
    assert resumed["labelled"] == whole["labelled"]  # the queue picked what the run without a cut picked
    assert resumed["rounds"][2]["accuracy"] == whole["rounds"][2]["accuracy"]
    assert resumed["wall_seconds"] > cut["wall_seconds"]

    def refused(*changed: str) -> str:
        before = cut_json.read_text()
        outcome = CliRunner().invoke(app, [*args, "--json", str(cut_json), "--resume", *changed])
        assert outcome.exit_code != 0 and cut_json.read_text() == before and starts == [starts[0]]
        return " ".join(outcome.output.replace("│", " ").split())  # typer folds the message inside a box

    assert "seed 0 there, 1 here" in refused("--seed", "1")
    assert "must start with them and go on" in refused()  # all three rounds are done
    assert "must start with them" in refused("--schedule", "6,10,20")
    (tmp_path / "cut.last.pt").unlink()
    assert "is missing" in refused("--schedule", "6,9,12,15")
    assert "name one that exists" in refused("--json", str(tmp_path / "none.json"))


def test_the_loop_section_says_per_target_whether_each_arm_met_it_or_rests_on_too_few_seeds() -> None:
    def entry(values: list[float]) -> dict:
        mean = sum(values) / len(values)
        return {"seeds": list(range(len(values))), "accuracy": {"mean": mean}}

    summary = {
        "diverse / kmeans": {50: entry([0.9] * 3), 100: entry([0.98, 0.99, 0.99]), 250: entry([0.995])},
        "random / random": {100: entry([0.97, 0.98, 0.96])},
    }
    assert target_lines(summary) == [
        "- Target ≥ 98.5 % on the test split at 100 labels: diverse / kmeans 98.7 %, met; "
        "random / random 97.0 %, missed by 1.5 points",
        "- Target ≥ 99.0 % on the test split at 250 labels: diverse / kmeans 99.5 %, above it by 0.5 points "
        "on 1 seed, short of the 3 the target is a mean over",
        "- Target, the product's strategy above random at every budget (test, mean over seeds): above random at "
        "every budget run so far (+1.7 points at 100 (3 random seeds)), short of 3 seeds of each arm at each of "
        "the product's budgets",
    ]
    summary["random / random"][50] = entry([0.91])
    so_far = "below random at a budget so far (-1.0 points at 50 (1 random seed), +1.7 points at 100 (3 random seeds))"
    assert so_far in target_lines(summary)[-1]
    # both arms at every budget of the product's, three seeds each: a verdict
    del summary["diverse / kmeans"][250]
    summary["random / random"][50] = entry([0.91, 0.92, 0.93])
    assert target_lines(summary)[-1].endswith("missed (-2.0 points at 50, +1.7 points at 100)")
    summary["random / random"][50] = entry([0.85, 0.88, 0.86])
    assert target_lines(summary)[-1].endswith("met (+3.7 points at 50, +1.7 points at 100)")
    assert target_lines({"random / random": {50: entry([0.9])}}) == []
