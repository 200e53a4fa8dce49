import pytest

from ml.data import cpu_has_bf16
from ml.throughput import measure


def test_throughput_compares_both_loops_on_the_same_model():
    out = measure(profile="tiny", steps=3, images=100)
    for loop in ("train", "inference"):
        assert out[loop]["leukolab"] > 0 and out[loop]["reference"] > 0
    assert out["train_speedup"] == pytest.approx(out["train"]["leukolab"] / out["train"]["reference"])
    assert out["model"]["width"] == 0.125 and out["model"]["image_size"] == 32
    assert out["leukolab_images_decoded"] == 400  # the generated folder: 5 classes x 80 JPEGs
    # the bf16 loop is timed only where the CPU runs bf16 natively
    assert (out["train_bf16"] is not None) == cpu_has_bf16()
    if out["train_bf16"] is not None:
        assert out["train_bf16"]["speedup"] == pytest.approx(out["train_bf16"]["leukolab"] / out["train"]["reference"])
