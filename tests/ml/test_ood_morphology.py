"""The morphology part of the "unlike any known class" score (ml.morphology, ml.ood): generated
tiles of large stained 'cells' against tiny purple dots, and the state in a checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ml.data import resize
from ml.morphology import DESCRIPTOR_NAMES, describe
from ml.ood import COMBINED_RULE, MORPH_EXCESS_FROM, MorphologyRequired, OODScorer, auroc, fit_ood

BACKGROUND = (235, 215, 200)  # the pale cream of a smear
STAIN = (95, 60, 150)  # haematoxylin purple
CYTOPLASM = (205, 190, 215)


def _tiles(n: int, kind: str, seed: int) -> np.ndarray:
    """uint8 N×3×64×64: ``round`` (class 0) and ``oval`` (class 1) are large stained nuclei in a pale
    cytoplasm; ``dot`` is a tiny purple fragment, as a platelet is."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    out = np.empty((n, 64, 64, 3))
    for i in range(n):
        cy, cx = 31.5 + rng.normal(0, 2, size=2)
        tile = np.zeros((64, 64, 3)) + BACKGROUND
        if kind == "dot":
            r = rng.uniform(2.0, 3.5)
            nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            cell = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(22, 25) ** 2
            tile[cell] = CYTOPLASM
            a = rng.uniform(13, 16)
            b = a if kind == "round" else a * 0.55
            nucleus = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 < 1
        tile[nucleus] = STAIN
        out[i] = tile + rng.normal(0, 6, size=tile.shape)
    return out.clip(0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def test_descriptors_tell_a_large_stained_nucleus_from_a_tiny_fragment() -> None:
    cells, dots = describe(_tiles(20, "round", 0)), describe(_tiles(20, "dot", 0))
    assert cells.shape == (20, len(DESCRIPTOR_NAMES)) and np.isfinite(cells).all() and np.isfinite(dots).all()
    area = DESCRIPTOR_NAMES.index("log_area")
    assert cells[:, area].min() > dots[:, area].max() + 1.0  # e^1: nearly three times the area at least
    # 32 px tiles are described at 64 px, as the model's own size does not change the description
    small = torch.nn.functional.interpolate(torch.from_numpy(_tiles(4, "round", 1)).float(), size=32)
    assert (
        np.abs(describe(small.round().to(torch.uint8))[:, area] - describe(_tiles(4, "round", 1))[:, area]).max() < 0.3
    )


def _fit(seed: int = 0):
    """Known classes 0 (round) and 1 (oval) whose network outputs carry no class information, so
    only the descriptors can tell a dot from a cell."""
    rng = np.random.default_rng(seed)
    train_x = np.concatenate([_tiles(40, "round", 1), _tiles(40, "oval", 2)])
    val_x = np.concatenate([_tiles(30, "round", 3), _tiles(30, "oval", 4)])
    train_y, val_y = np.repeat([0, 1], 40), np.repeat([0, 1], 30)
    scorer = fit_ood(
        rng.normal(size=(80, 8)),
        train_y,
        rng.normal(size=(60, 2)),
        rng.normal(size=(60, 8)),
        val_y,
        2,
        target_tpr=0.9,
        train_descriptors=describe(train_x),
        val_descriptors=describe(val_x),
    )
    return scorer, rng, val_x


def test_the_combined_score_flags_tiny_fragments_the_network_cannot_see() -> None:
    scorer, rng, val_x = _fit()
    assert (scorer.method, scorer.base) == COMBINED_RULE  # descriptors given: always combined, this way
    assert scorer.method == "morph-excess" and set(scorer.mix_stats) == {"energy", "mahalanobis"}
    assert {"morph", "morph-sum", "morph-max", "morph-excess", "cosine"} <= set(scorer.selection)
    known, dots = np.concatenate([_tiles(20, "round", 5), _tiles(20, "oval", 6)]), _tiles(40, "dot", 7)
    s_in = scorer.score(rng.normal(size=(40, 2)), rng.normal(size=(40, 8)), images=known)
    s_out = scorer.score(rng.normal(size=(40, 2)), rng.normal(size=(40, 8)), images=dots)
    assert auroc(s_in, s_out) >= 0.95
    assert scorer.is_unlike(s_out).mean() >= 0.9
    assert scorer.is_unlike(s_in).mean() <= 0.3
    morph_only = fit_ood(
        rng.normal(size=(80, 8)),
        np.repeat([0, 1], 40),
        rng.normal(size=(60, 2)),
        rng.normal(size=(60, 8)),
        np.repeat([0, 1], 30),
        2,
        method="morph",
        train_descriptors=describe(np.concatenate([_tiles(40, "round", 1), _tiles(40, "oval", 2)])),
        val_descriptors=describe(val_x),
    )
    d_in, d_out = describe(known), describe(dots)
    assert (
        auroc(
            morph_only.score(None, np.zeros((40, 8)), descriptors=d_in),
            morph_only.score(None, np.zeros((40, 8)), descriptors=d_out),
        )
        >= 0.99
    )


def test_morphology_state_travels_in_a_checkpoint_and_old_state_scores_with_the_network() -> None:
    scorer, rng, val_x = _fit(1)
    logits, features = rng.normal(size=(60, 2)), rng.normal(size=(60, 8))
    buffer = io.BytesIO()
    torch.save({"ood": scorer.state()}, buffer)
    buffer.seek(0)
    restored = OODScorer.from_state(torch.load(buffer, weights_only=True)["ood"])
    assert (restored.method, restored.base) == (scorer.method, scorer.base)
    assert np.allclose(restored.score(logits, features, images=val_x), scorer.score(logits, features, images=val_x))
    with pytest.raises(MorphologyRequired):
        restored.score(logits, features)
    # a model trained at 32 px: its cells are brought to 32 px before they are described
    scorer.morph_size = 32
    at_32 = OODScorer.from_state(scorer.state())
    assert at_32.morph_size == 32
    small = resize(torch.from_numpy(val_x), 32)
    assert np.allclose(at_32.score(logits, features, images=val_x), at_32.score(logits, features, images=small))
    assert not np.allclose(at_32.score(logits, features, images=val_x), restored.score(logits, features, images=val_x))
    # a checkpoint from before: no descriptors in its state, the network's method alone
    old = {k: v for k, v in scorer.state().items() if k not in ("morph", "base", "combine_stats")}
    old["method"] = "cosine"
    legacy = OODScorer.from_state(old)
    assert legacy.morph is None and not legacy.uses_morphology
    assert legacy.score(logits, features).shape == (60,)


def test_a_usual_shape_takes_nothing_off_and_an_odd_one_adds() -> None:
    """morph-excess: an unknown white cell (a white cell's nucleus, odd network features) keeps the
    network's score in full, where morph-sum pulls it down; a tiny fragment is flagged by both."""
    fitted, rng, _ = _fit(2)
    scorer = OODScorer.from_state(fitted.state())  # all three from the same (half-precision) bank
    sums = OODScorer.from_state({**scorer.state(), "method": "morph-sum"})
    cells = np.concatenate([_tiles(20, "round", 8), _tiles(20, "oval", 9)])
    logits, features = rng.normal(size=(40, 2)), rng.normal(size=(40, 8))
    d = describe(cells)
    base = scorer.combine_stats["base"]
    network = OODScorer.from_state({**scorer.state(), "method": scorer.base, "morph": None})
    z_base = (network.score(logits, features) - base[0]) / base[1]
    z_morph = (scorer.morph.distance(d, np.arange(2)) - scorer.combine_stats["morph"][0]) / scorer.combine_stats[
        "morph"
    ][1]
    excess = scorer.score(logits, features, descriptors=d)
    usual = z_morph <= MORPH_EXCESS_FROM
    assert usual.mean() > 0.5  # most known-shaped cells lie within a standard deviation or so
    assert np.allclose(excess[usual], z_base[usual])  # nothing taken off, nothing added
    assert np.allclose(excess[~usual], z_base[~usual] + z_morph[~usual] - MORPH_EXCESS_FROM)
    below = z_morph < 0
    assert below.any() and (excess[below] > sums.score(logits, features, descriptors=d)[below]).all()
    dots = describe(_tiles(20, "dot", 10))
    assert (scorer.score(logits[:20], features[:20], descriptors=dots) > scorer.threshold).all()
