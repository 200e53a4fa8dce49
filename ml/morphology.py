"""Morphology descriptors of a cell tile: what a white blood cell looks like, without the network.

Domain knowledge, fixed before any measurement on unknown cells: every white blood cell has a
large, haematoxylin-stained nucleus near the tile's centre; a platelet is a tiny purple fragment;
an erythroblast has a small, very dense, round nucleus. So each tile is described by its
haematoxylin optical density (``skimage.color.rgb2hed``), thresholded per tile with Otsu (never
below ``STAIN_FLOOR``), and the
stained object nearest the centre (``skimage.measure.regionprops``):

- ``log_area``: log of the object's share of the tile.
- ``solidity``: area over convex-hull area (a lobed nucleus is lower).
- ``eccentricity``: of the object's ellipse (0: a disc).
- ``density``: the object's mean haematoxylin density.
- ``texture``: its coefficient of variation of density (granules, chromatin).
- ``lobes``: log of one plus the number of other stained objects of at least a tenth of its
  area within the central disc (pieces of a segmented nucleus, clumped fragments).
- ``log_central_stain``: log of the stained share of the central disc.

Descriptors are computed on ``ml.images.MODEL_SIZE`` px tiles (others are resized first), so
that training, the worker and the benchmarks describe a cell the same way. numpy in, numpy out.
"""

from __future__ import annotations

import numpy as np

from ml.images import MODEL_SIZE

DESCRIPTOR_NAMES: tuple[str, ...] = (
    "log_area",
    "solidity",
    "eccentricity",
    "density",
    "texture",
    "lobes",
    "log_central_stain",
)
CENTRAL_RADIUS = 0.375  # of the tile side: the disc where the cell's own stain lies
# The least haematoxylin density (rgb2hed units) that counts as stain. Otsu finds the cut between
# nucleus and the rest when there is a nucleus; in a tile with almost no stain it cuts the
# background's noise instead. The floor is below every per-tile Otsu cut of the PBC validation
# cells of the known classes (0.034-0.072), so it binds only where a tile has next to no stain.
STAIN_FLOOR = 0.03
LOBE_SHARE = 0.1  # another stained object counts as a lobe at a tenth of the main one's area
_FLOOR = 1.0 / (MODEL_SIZE * MODEL_SIZE)  # the log of an empty area


def _as_hwc(images) -> np.ndarray:
    """uint8 N×H×W×3 (a torch tensor or numpy, channels first or last) at ``MODEL_SIZE`` px."""
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of RGB tiles (N×3×S×S or N×S×S×3), got shape {x.shape}")
    if x.shape[1] == 3 and x.shape[-1] != 3:
        x = x.transpose(0, 2, 3, 1)
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if x.shape[1:3] != (MODEL_SIZE, MODEL_SIZE):
        from PIL import Image

        resample = Image.Resampling.LANCZOS if x.shape[1] > MODEL_SIZE else Image.Resampling.BICUBIC
        x = np.stack([np.asarray(Image.fromarray(t).resize((MODEL_SIZE, MODEL_SIZE), resample)) for t in x])
    return x


def haematoxylin(images) -> np.ndarray:
    """N×S×S haematoxylin optical density of uint8 RGB tiles (``skimage.color.rgb2hed``)."""
    from skimage.color import rgb2hed

    x = _as_hwc(images)
    return rgb2hed(x.astype(np.float32) / 255.0, channel_axis=-1)[..., 0]


def _describe(h: np.ndarray, central: np.ndarray, centre_distance: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    empty = np.array([np.log(_FLOOR), 0.0, 0.0, float(h.mean()), 0.0, 0.0, np.log(_FLOOR)])
    if float(h.max() - h.min()) < 1e-6:
        return empty
    mask = h > max(float(threshold_otsu(h)), STAIN_FLOOR)
    labels = label(mask, connectivity=2)
    n = int(labels.max())
    if n == 0:
        return empty
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    nearest = ndimage.minimum(centre_distance, labels, np.arange(1, n + 1))
    main = int(np.argmin(nearest)) + 1
    obj = regionprops((labels == main).astype(np.uint8))[0]
    values = h[labels == main]
    mean = float(values.mean())
    in_centre = np.unique(labels[central & mask])
    lobes = int(((in_centre != main) & (areas[in_centre] >= LOBE_SHARE * areas[main])).sum())
    return np.array(
        [
            np.log(max(obj.area * _FLOOR, _FLOOR)),
            float(obj.solidity),
            float(obj.eccentricity) if obj.area > 1 else 0.0,
            mean,
            float(values.std() / max(abs(mean), 1e-6)),
            np.log1p(lobes),
            np.log(max(float((mask & central).sum()) / central.sum(), _FLOOR)),
        ]
    )


def describe(images) -> np.ndarray:
    """N×7 float64 descriptors (``DESCRIPTOR_NAMES``) of uint8 RGB tiles."""
    h = haematoxylin(images)
    yy, xx = np.mgrid[:MODEL_SIZE, :MODEL_SIZE]
    centre = (MODEL_SIZE - 1) / 2.0
    distance = np.hypot(yy - centre, xx - centre)
    central = distance <= CENTRAL_RADIUS * MODEL_SIZE
    out = np.empty((len(h), len(DESCRIPTOR_NAMES)))
    for i, tile in enumerate(h):
        out[i] = _describe(tile, central, distance)
    return out
