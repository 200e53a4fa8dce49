"""The cold start: the first cells to label, chosen with no model, cover the pool's clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.coldstart import cold_start, colour_texture_features, kmeans_pick, random_net_features
from tests.support.images import make_cell_image


def _blobs(sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(len(sizes))  # every feature tells one cluster from the rest
    x = np.concatenate([c + rng.normal(0, 0.5, size=(n, len(sizes))) for c, n in zip(centres, sizes, strict=True)])
    return x, np.repeat(np.arange(len(sizes)), sizes)


def test_kmeans_pick_takes_one_distinct_cell_from_every_cluster_even_the_small_ones() -> None:
    features, cluster = _blobs([300, 60, 20, 8, 4])
    for seed in range(5):
        picked = kmeans_pick(features, 5, seed=seed)
        assert len(picked) == len(set(picked.tolist())) == 5
        assert sorted(cluster[picked].tolist()) == [0, 1, 2, 3, 4]
    uniform = np.random.default_rng(1).choice(len(cluster), 5, replace=False)
    assert len(set(cluster[uniform].tolist())) < 5  # a uniform draw misses the small clusters
    more = kmeans_pick(features, 12, seed=1)
    assert len(set(more.tolist())) == 12 and set(cluster[more].tolist()) == {0, 1, 2, 3, 4}


def _cells(per_class: int, classes: int = 3, size: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    images = [
        np.asarray(make_cell_image(100 * c + i, size, c).convert("RGB"))
        for c in range(classes)
        for i in range(per_class)
    ]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, np.repeat(np.arange(classes), per_class)


@pytest.mark.parametrize("features", ["colour", "random-net"])
def test_cold_start_on_images_returns_the_requested_distinct_cells_of_every_class(features: str) -> None:
    x, y = _cells(12)
    picked = cold_start(x, 6, method="kmeans", features=features, seed=0)
    assert picked.dtype == np.int64 and len(set(picked.tolist())) == 6
    assert picked.min() >= 0 and picked.max() < len(x)
    if features == "colour":  # the generated classes differ by their stain's colour
        assert set(y[picked].tolist()) == {0, 1, 2}
    assert len(cold_start(x, 100, method="kmeans", features=features)) == len(x)  # never more than the pool


def test_random_cold_start_and_errors() -> None:
    x, _ = _cells(4)
    picked = cold_start(x, 5, method="random", seed=3)
    assert len(set(picked.tolist())) == 5
    assert np.array_equal(picked, cold_start(x, 5, method="random", seed=3))
    with pytest.raises(ValueError, match="cold start"):
        cold_start(x, 5, method="magic")
    with pytest.raises(ValueError, match="features"):
        cold_start(x, 5, method="kmeans", features="magic")


def test_feature_shapes() -> None:
    x, _ = _cells(3)
    assert colour_texture_features(x).shape[0] == len(x)
    assert random_net_features(x, image_size=32).shape[0] == len(x)
    assert np.isfinite(colour_texture_features(x)).all()
