"""``leukolab bench throughput``: both loops timed on the same model, as its JSON reports."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from ml.device import cpu_has_bf16


def test_throughput_compares_both_loops_on_the_same_model(tmp_path):
    report = tmp_path / "throughput.json"
    args = ["bench", "throughput", "--profile", "tiny", "--steps", "3", "--images", "100", "--json", str(report)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(report.read_text())
    for loop in ("train", "inference"):
        assert out[loop]["leukolab"] > 0 and out[loop]["reference"] > 0
    assert out["train_speedup"] == pytest.approx(out["train"]["leukolab"] / out["train"]["reference"])
    assert out["model"]["width"] == 0.125 and out["model"]["image_size"] == 32
    assert out["leukolab_images_decoded"] == 400  # the generated folder: 5 classes x 80 JPEGs
    assert out["device"].startswith(("cpu: ", "cuda: "))
    # the bf16 loop is timed only where the CPU runs bf16 natively
    assert (out["train_bf16"] is not None) == cpu_has_bf16()
    if out["train_bf16"] is not None:
        assert out["train_bf16"]["speedup"] == pytest.approx(out["train_bf16"]["leukolab"] / out["train"]["reference"])
    # the tiny profile trains in float32: its own figure is the float32 loop's
    assert out["train_precision"] == "float32"
    assert out["train"]["leukolab"] == out["train_fp32"]["leukolab"]
    assert out["train_fp32"]["speedup"] == pytest.approx(out["train_speedup"])
