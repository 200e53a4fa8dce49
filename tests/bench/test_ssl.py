"""``leukolab bench ssl`` on a tiny generated dataset with a manifest: the JSON it writes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests.support.images import make_manifest_dataset


def test_bench_ssl_reports_accuracy_funnel_and_the_single_view_figure(tmp_path: Path) -> None:
    data = make_manifest_dataset(tmp_path / "data", train_per_class=12, test_per_class=4)
    out = tmp_path / "run.json"
    settings = ["pretrain_epochs=1", "epochs=1", "round_epochs=1", "steps_per_epoch=4", "batch_size=12"]
    settings += ["labelled_per_batch=6", "tta=true", "entropy_threshold=0.5"]
    args = ["bench", "ssl", "--data", str(data), "--labels-per-class", "3", "--method", "mean-teacher+lp"]
    args += ["--profile", "tiny", "--seed", "1", "--json", str(out)]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["n_labelled"], report["n_unlabelled"], report["n_test"]) == (9, 27, 12)
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["single_view_accuracy"] <= 1.0
    assert sum(map(sum, report["confusion"])) == 12
    assert set(report["per_class"]) == {"basophil", "eosinophil", "lymphocyte"}
    funnel = report["pseudo_labels"]["funnel"]
    assert funnel["unlabelled"] == 27 and funnel["set1"] >= funnel["set2"]
    config = report["config"]
    assert (config["pretrain_epochs"], config["tta"], config["method"]) == (1, True, "mean-teacher+lp")
    # the pre-training, then the mean teacher's two rounds, in the learning curve
    assert [h["algorithm"] for h in report["history"]] == ["supervised", "mean-teacher", "mean-teacher"]
