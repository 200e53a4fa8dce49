"""The retrain recipe's rules: config from the run params, warm starts only onto the same network."""

from __future__ import annotations

from collections import Counter

from ml.config import make_config
from ml.retrain import ActiveModel, retrain_config, warm_start_checkpoint


def test_epochs_param_sets_both_rounds_and_threshold_follows_labels_per_class() -> None:
    few = retrain_config("cpu", "lp+mean-teacher", {"epochs": 6}, Counter({0: 8, 1: 8, 2: 40}), seed=3)
    assert (few.epochs, few.round_epochs, few.seed) == (6, 3, 3)  # warm-started later round: half
    assert few.entropy_threshold == 0.001  # median 8 labels per class: Table 4's 10-label threshold
    many = retrain_config("cpu", "lp+mean-teacher", {}, Counter({0: 30, 1: 30}), seed=0)
    default = make_config("cpu", "lp+mean-teacher")
    assert (many.epochs, many.round_epochs) == (default.epochs, default.round_epochs)
    assert many.entropy_threshold == 0.01
    fresh = retrain_config("cpu", "mean-teacher+lp", {"epochs": 6}, Counter({0: 5}), 0, {"round_reinit": True})
    assert fresh.round_reinit and fresh.round_epochs == 3  # overrides apply after the recipe
    assert (
        retrain_config("cpu", "mean-teacher+lp", {"entropy_threshold": 0.2}, Counter({0: 5}), 0).entropy_threshold
        == 0.2
    )


def test_warm_start_needs_the_flag_and_the_same_network() -> None:
    config = make_config("tiny", "supervised")
    loads: list[int] = []

    def active(width: float) -> ActiveModel:
        checkpoint = {"model_config": {"width": width, "image_size": config.image_size, "arch": config.arch}}
        return ActiveModel(id=7, load=lambda: loads.append(1) or checkpoint)

    assert warm_start_checkpoint(config, {}, active(config.width)) is not None
    assert warm_start_checkpoint(config, {}, active(config.width * 2)) is None  # another network: from scratch
    before = len(loads)
    assert warm_start_checkpoint(config, {"warm_start": False}, active(config.width)) is None
    assert len(loads) == before  # not even loaded
    assert warm_start_checkpoint(config, {}, None) is None
