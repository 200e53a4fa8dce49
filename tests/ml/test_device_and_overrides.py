"""ml.device's name (the one format of bench JSONs and worker runs) and ml.config's --set parser."""

from __future__ import annotations

import re

import pytest
import torch

from ml.config import config_from_dict, make_config, parse_overrides
from ml.device import CPU_VECTOR_UNITS, device_name


def test_cpu_device_name_is_the_format_the_results_page_reads():
    name = device_name(torch.device("cpu"))
    units = "|".join(re.escape(u) for u in CPU_VECTOR_UNITS)
    assert re.fullmatch(rf"cpu: .+ \(({units})\), {torch.get_num_threads()} threads", name), name


@pytest.mark.parametrize(
    ("native", "flags", "unit"),
    [
        (True, {"avx512_bf16", "amx_bf16", "amx_tile"}, "AMX BF16"),
        (True, {"avx512_bf16"}, "AVX-512 BF16"),
        (False, {"amx_bf16"}, "no native bf16"),
    ],
)
def test_the_cpu_name_tells_matrix_tiles_from_vector_bf16(monkeypatch, native, flags, unit):
    from ml import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
    assert f"({unit})" in device.cpu_name()


def test_set_values_are_validated_against_the_config_field_types():
    values = parse_overrides(
        ["epochs=3", "tta=true", "hflip=0", "lr=5e-5", "true_label_share=none", "steps_per_epoch=null", "arch=resnet50"]
    )
    assert values == {
        "epochs": 3,
        "tta": True,
        "hflip": False,
        "lr": 5e-5,
        "true_label_share": None,
        "steps_per_epoch": None,
        "arch": "resnet50",
    }
    assert make_config("tiny", **values).epochs == 3
    assert parse_overrides(None) == {}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("epochs=many", "epochs='many'"),
        ("tta=maybe", "tta='maybe'"),
        ("colour=red", "unknown config field 'colour'"),
        ("epochs", "expected key=value"),
    ],
)
def test_set_rejects_what_the_config_cannot_hold(pair, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_overrides([pair])


def test_a_stored_config_reads_back_with_defaults_for_missing_fields():
    stored = {"method": "supervised", "entropy_threshold": 0.005, "a_field_removed_since": 1}
    config = config_from_dict(stored)
    assert (config.method, config.entropy_threshold, config.lp_neighbors) == ("supervised", 0.005, 8)
    assert config_from_dict(None).entropy_threshold == make_config("tiny").entropy_threshold


@pytest.fixture
def fresh_bf16_choice(monkeypatch):
    import ml.device

    monkeypatch.delenv("LEUKOLAB_CPU_BF16", raising=False)  # the measured choice, whatever the shell forces
    ml.device.cpu_bf16_pays.cache_clear()
    yield ml.device
    ml.device.cpu_bf16_pays.cache_clear()


@pytest.mark.parametrize(
    ("native", "speedup", "expected"),
    [(True, 1.6, True), (True, 0.5, False), (True, 1.05, False), (False, 3.0, False)],
)
def test_cpu_training_uses_bf16_only_where_it_is_native_and_measured_faster(
    fresh_bf16_choice, monkeypatch, native, speedup, expected
):
    from ml.data import autocast, train_precision, uses_bf16

    device = fresh_bf16_choice
    measured = []
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(device, "bf16_speedup", lambda: measured.append(1) or speedup)
    cpu = torch.device("cpu")
    assert uses_bf16(cpu, cpu_bf16=True) is expected
    assert uses_bf16(cpu, cpu_bf16=True) is expected
    assert len(measured) == (1 if native else 0)  # measured once per process, and only where bf16 is native
    assert uses_bf16(cpu, cpu_bf16=False) is False  # the profile's setting still decides first
    assert train_precision(cpu, cpu_bf16=True) == ("bf16" if expected else "float32")  # as runs record it
    with autocast(cpu, cpu_bf16=True):
        assert torch.is_autocast_enabled("cpu") is expected


def test_the_bf16_probe_times_real_training_steps(fresh_bf16_choice):
    speedup = fresh_bf16_choice.bf16_speedup(batch=4, repeats=1)
    assert 0.0 < speedup < float("inf")


def test_the_bf16_choice_can_be_forced_either_way(fresh_bf16_choice, monkeypatch):
    device = fresh_bf16_choice
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(device, "bf16_speedup", lambda: 0.5)  # slower here
    monkeypatch.setenv("LEUKOLAB_CPU_BF16", "on")
    assert device.cpu_bf16_pays() is True
    device.cpu_bf16_pays.cache_clear()
    monkeypatch.setattr(device, "bf16_speedup", lambda: 2.0)
    monkeypatch.setenv("LEUKOLAB_CPU_BF16", "off")
    assert device.cpu_bf16_pays() is False
    device.cpu_bf16_pays.cache_clear()
    monkeypatch.setenv("LEUKOLAB_CPU_BF16", "fast")
    with pytest.raises(ValueError, match="use auto, on or off"):
        device.cpu_bf16_pays()
