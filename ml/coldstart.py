"""The first cells to label, before any model exists: k-means++ over features that need no labels,
one cell per cluster (the one nearest its centre), so the first labels cover the pool's variety.

Features (``FEATURES``):

- ``colour``: colour and texture of the whole image and of its centre (where the white cell sits):
  per-channel moments and histograms in RGB and HSV, grey-level co-occurrence statistics
  (scikit-image), and a 16×16 grey thumbnail; standardised, then reduced by PCA.
- ``random-net``: the penultimate features of the classifier's network with random weights.

``leukolab bench active --cold-start kmeans`` starts with these; ``random`` draws uniformly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

FEATURES: tuple[str, ...] = ("colour", "random-net")
DEFAULT_FEATURES = "colour"
COLD_STARTS: tuple[str, ...] = ("kmeans", "random")
_PCA_DIMS = 32
_GREY_LEVELS = 32
_KMEANS_INITS = 4  # k-means++ seedings; the best by inertia is kept


def _moments(values: np.ndarray) -> np.ndarray:
    """Mean, standard deviation and skewness over the last axis."""
    mean = values.mean(axis=-1)
    std = values.std(axis=-1)
    skew = ((values - mean[..., None]) ** 3).mean(axis=-1) / np.maximum(std, 1e-6) ** 3
    return np.concatenate([mean, std, skew], axis=-1)


def _histograms(values: np.ndarray, bins: int = 8) -> np.ndarray:
    """Per-channel histograms (fractions) of N×C×P values in [0, 1]."""
    index = np.clip((values * bins).astype(np.int64), 0, bins - 1)
    n, c, p = index.shape
    flat = index + bins * np.arange(c)[None, :, None]
    counts = np.stack([np.bincount(row.ravel(), minlength=c * bins) for row in flat])
    return counts / p


def _texture(grey: np.ndarray) -> np.ndarray:
    """Grey-level co-occurrence statistics (distances 1 and 3, four angles averaged) per image."""
    from skimage.feature import graycomatrix, graycoprops

    levels = np.clip((grey * _GREY_LEVELS).astype(np.uint8), 0, _GREY_LEVELS - 1)
    props = ("contrast", "homogeneity", "energy", "correlation")
    out = np.empty((len(grey), 2 * len(props)))
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    for i, image in enumerate(levels):
        matrix = graycomatrix(image, [1, 3], angles, levels=_GREY_LEVELS, symmetric=True, normed=True)
        out[i] = np.concatenate([graycoprops(matrix, p).mean(axis=1) for p in props])
    return np.nan_to_num(out)


def colour_texture_features(x: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """``colour`` features of uint8 images N×3×S×S (any S ≥ 16)."""
    import torch
    from skimage.color import rgb2hsv

    parts = []
    for start in range(0, len(x), chunk):
        rgb = x[start : start + chunk].float().div(255.0)
        thumb = torch.nn.functional.interpolate(rgb, size=(32, 32), mode="bilinear", antialias=True)
        rgb_np = thumb.numpy()  # N×3×32×32
        hsv = rgb2hsv(rgb_np.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        centre = slice(8, 24)
        grey = rgb_np.mean(axis=1)
        small = torch.nn.functional.interpolate(rgb.mean(dim=1, keepdim=True), size=(16, 16), mode="area")
        features = [
            _moments(rgb_np.reshape(len(rgb_np), 3, -1)).reshape(len(rgb_np), -1),
            _moments(hsv.reshape(len(hsv), 3, -1)).reshape(len(hsv), -1),
            _moments(rgb_np[:, :, centre, centre].reshape(len(rgb_np), 3, -1)).reshape(len(rgb_np), -1),
            _histograms(rgb_np.reshape(len(rgb_np), 3, -1)),
            _histograms(hsv.reshape(len(hsv), 3, -1)),
            _histograms(hsv[:, :, centre, centre].reshape(len(hsv), 3, -1)),
            _texture(grey),
            _texture(grey[:, centre, centre]),
            small.flatten(1).numpy(),
        ]
        parts.append(np.concatenate(features, axis=1))
    return np.concatenate(parts).astype(np.float64)


def random_net_features(x: torch.Tensor, seed: int = 0, width: float = 0.25, image_size: int = 64) -> np.ndarray:
    """Penultimate features of the classifier's network, untrained (random weights by ``seed``)."""
    import torch

    from ml.data import resize
    from ml.infer import predict
    from ml.model import ModelConfig, build_model

    torch.manual_seed(seed)
    xs = resize(x, image_size)
    mean = xs.float().mean(dim=(0, 2, 3)).tolist()
    std = xs.float().std(dim=(0, 2, 3)).clamp(min=1.0).tolist()
    config = ModelConfig(n_classes=2, width=width, image_size=image_size, mean=tuple(mean), std=tuple(std))
    model = build_model(config).eval()
    return predict(model, xs, tta=False).features.astype(np.float64)


def features_for(x: torch.Tensor, kind: str = DEFAULT_FEATURES, seed: int = 0) -> np.ndarray:
    if kind == "colour":
        return colour_texture_features(x)
    if kind == "random-net":
        return random_net_features(x, seed=seed)
    raise ValueError(f"unknown cold-start features {kind!r}; choose from {FEATURES}")


def kmeans_pick(features: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct rows: k-means++ (then Lloyd, best of a few seedings) into ``n`` clusters over the standardised,
    PCA-reduced ``features``, and from each cluster the unpicked row nearest its centre; the
    order is the clusters', largest first."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    n = min(n, len(features))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    z = StandardScaler().fit_transform(features)
    dims = min(_PCA_DIMS, z.shape[1], len(z))
    if dims < z.shape[1]:
        z = PCA(n_components=dims, random_state=seed).fit_transform(z)
    km = KMeans(n_clusters=n, init="k-means++", n_init=_KMEANS_INITS, random_state=seed).fit(z)
    distance = km.transform(z)  # N×n distances to the centres
    sizes = np.bincount(km.labels_, minlength=n)
    taken = np.zeros(len(z), dtype=bool)
    chosen = []
    for cluster in np.argsort(-sizes, kind="stable"):
        d = np.where(taken, np.inf, distance[:, cluster])
        pick = int(np.argmin(d))
        taken[pick] = True
        chosen.append(pick)
    return np.asarray(chosen, dtype=np.int64)


def cold_start(
    x: torch.Tensor, n: int, *, method: str = "kmeans", features: str = DEFAULT_FEATURES, seed: int = 0
) -> np.ndarray:
    """Indices of the ``n`` cells of ``x`` (uint8 N×3×S×S) to label first, with no model."""
    if method not in COLD_STARTS:
        raise ValueError(f"unknown cold start {method!r}; choose from {COLD_STARTS}")
    n = min(n, len(x))
    if method == "random":
        return np.random.default_rng(seed).choice(len(x), n, replace=False).astype(np.int64)
    return kmeans_pick(features_for(x, features, seed=seed), n, seed=seed)
