"""Which unlabelled cells an expert should label next: pure numpy selection functions.

``rank_for_queue`` (pseudo-label filters, then ``select_for_labelling``) is what the product's
queue and ``leukolab bench active`` both use.
Strategies:

- ``random``: a uniform sample (the benchmark's baseline).
- ``uncertainty``: highest predictive entropy first.
- ``margin``: smallest gap between the two most likely classes first.
- ``diverse`` (the default): cells rejected by the pseudo-label filters and of high entropy or
  low margin form a candidate pool a few times the batch; the batch is then spread across the
  predicted classes and, inside each class, chosen by k-center greedy on the model's features
  (starting from the labelled cells), so it holds no near-duplicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ml.config import TrainConfig
from ml.pseudo import REJECTED, PseudoLabels, entropy, filter_pseudo_labels

STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "margin", "diverse")
DEFAULT_STRATEGY = "diverse"

HIGH_ENTROPY = "high entropy"
LOW_MARGIN = "low margin"
REJECTED_BY_FILTERS = "rejected by filters"
DIVERSE = "diverse"
RANDOM = "random"
UNLIKE_ANY_CLASS = "unlike any known class"  # ml.ood: first in the queue, never pseudo-labelled


@dataclass
class Selection:
    """Chosen rows in queue order (first = label first), with a reason and a priority each."""

    indices: np.ndarray  # int64 rows of the scored pool
    reasons: list[str]
    priorities: np.ndarray  # float64, strictly decreasing

    def __len__(self) -> int:
        return len(self.indices)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (1 = certain, 0 = a tie)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy divided by its maximum, log C: 0 = certain, 1 = uniform."""
    probs = np.asarray(probs, dtype=np.float64)
    return entropy(probs) / np.log(max(probs.shape[1], 2))


def _unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _min_sq_distances(points: np.ndarray, centres: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Squared distance from each of ``points`` to its nearest row of ``centres``."""
    if len(centres) == 0:
        return np.full(len(points), np.inf)
    best = np.full(len(points), np.inf)
    p_sq = (points**2).sum(axis=1)
    for start in range(0, len(centres), chunk):
        c = centres[start : start + chunk]
        d = p_sq[:, None] - 2.0 * points @ c.T + (c**2).sum(axis=1)[None, :]
        best = np.minimum(best, d.min(axis=1))
    return np.maximum(best, 0.0)


def k_center_greedy(
    features: np.ndarray,
    n: int,
    *,
    centres: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Pick ``n`` rows of ``features`` one by one, each the farthest from everything picked so
    far and from ``centres`` (e.g. the labelled cells). Features are compared on the unit sphere.
    With ``weights`` (positive, e.g. uncertainty) a row's distance is multiplied by its weight,
    so far *and* uncertain rows win; with no centres the first pick is the heaviest row."""
    x = _unit(features)
    n = min(n, len(x))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    distance = _min_sq_distances(x, _unit(centres)) if centres is not None and len(centres) else np.full(len(x), np.inf)
    weight = np.ones(len(x)) if weights is None else np.maximum(np.asarray(weights, dtype=np.float64), 1e-6)
    taken = np.zeros(len(x), dtype=bool)
    chosen: list[int] = []
    for _ in range(n):
        score = np.where(np.isinf(distance), 1e3, distance) * weight
        score[taken] = -np.inf
        pick = int(np.argmax(score))
        chosen.append(pick)
        taken[pick] = True
        distance = np.minimum(distance, ((x - x[pick]) ** 2).sum(axis=1))
    return np.asarray(chosen, dtype=np.int64)


def balanced_quotas(available: dict[int, int], n: int) -> dict[int, int]:
    """Split ``n`` as evenly as possible over the classes, never above what each has."""
    quotas = {c: 0 for c in available}
    left = min(n, sum(available.values()))
    while left > 0:
        open_classes = [c for c in sorted(available) if quotas[c] < available[c]]
        share = max(1, left // len(open_classes))
        for c in open_classes:
            take = min(share, available[c] - quotas[c], left)
            quotas[c] += take
            left -= take
            if left == 0:
                break
    return quotas


def _reason(i: int, high_entropy: set[int], low_margin: set[int], outcomes: np.ndarray | None, default: str) -> str:
    if i in high_entropy:
        return HIGH_ENTROPY
    if i in low_margin:
        return LOW_MARGIN
    if outcomes is not None and outcomes[i] == REJECTED:
        return REJECTED_BY_FILTERS
    return default


def select_for_labelling(
    probs: np.ndarray,
    features: np.ndarray | None,
    n: int,
    *,
    strategy: str = DEFAULT_STRATEGY,
    outcomes: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
    pool_factor: int = 4,
    seed: int = 0,
) -> Selection:
    """Choose ``n`` rows of the scored unlabelled pool (``probs`` N×C, ``features`` N×D,
    ``outcomes`` the pseudo-label filter's verdict per row) in the order to label them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    probs = np.asarray(probs, dtype=np.float64)
    total = len(probs)
    n = max(0, min(n, total))
    if n == 0:
        return Selection(np.empty(0, dtype=np.int64), [], np.empty(0))
    ent = normalised_entropy(probs)
    mar = margin(probs)
    by_entropy = np.argsort(-ent, kind="stable")
    by_margin = np.argsort(mar, kind="stable")
    high_entropy = set(by_entropy[: max(1, n // 2)].tolist())
    low_margin = set(by_margin[: max(1, n // 2)].tolist())

    if strategy == "random":
        order = np.random.default_rng(seed).permutation(total)[:n]
        reasons = [RANDOM] * n
    elif strategy == "uncertainty":
        order = by_entropy[:n]
        reasons = [HIGH_ENTROPY] * n
    elif strategy == "margin":
        order = by_margin[:n]
        reasons = [LOW_MARGIN] * n
    else:
        if features is None:
            raise ValueError("the diverse strategy needs the model's features")
        order = _diverse(probs, np.asarray(features), n, ent, mar, outcomes, labelled_features, pool_factor)
        reasons = [_reason(int(i), high_entropy, low_margin, outcomes, DIVERSE) for i in order]
    order = np.asarray(order, dtype=np.int64)
    priorities = np.arange(len(order), 0, -1, dtype=np.float64)
    return Selection(order, reasons, priorities)


def _diverse(
    probs: np.ndarray,
    features: np.ndarray,
    n: int,
    ent: np.ndarray,
    mar: np.ndarray,
    outcomes: np.ndarray | None,
    labelled_features: np.ndarray | None,
    pool_factor: int,
) -> np.ndarray:
    # Uncertainty in [0, 2]: entropy plus (1 - margin); a filter rejection adds 1 so those come first.
    score = ent + (1.0 - mar)
    if outcomes is not None:
        score = score + (np.asarray(outcomes) == REJECTED)
    pool = np.argsort(-score, kind="stable")[: min(len(probs), max(n, pool_factor * n))]
    predicted = probs[pool].argmax(axis=1)
    quotas = balanced_quotas({int(c): int((predicted == c).sum()) for c in np.unique(predicted)}, n)
    centres = labelled_features if labelled_features is not None else np.empty((0, features.shape[1]))
    per_class: dict[int, list[int]] = {}
    for c, quota in quotas.items():
        members = pool[predicted == c]
        picked = k_center_greedy(features[members], quota, centres=centres, weights=score[members])
        # Within a class, label the most uncertain of the diverse picks first.
        per_class[c] = sorted(members[picked].tolist(), key=lambda i: -score[i])
    # Interleave the classes so the first screens already cover every predicted class.
    order: list[int] = []
    rank = 0
    while len(order) < n and any(rank < len(v) for v in per_class.values()):
        layer = [v[rank] for v in per_class.values() if rank < len(v)]
        order.extend(sorted(layer, key=lambda i: -score[i]))
        rank += 1
    return np.asarray(order[:n], dtype=np.int64)


def rank_for_queue(
    probs: np.ndarray,
    features: np.ndarray,
    labelled_features: np.ndarray | None,
    labelled_y: np.ndarray,
    config: TrainConfig,
    n: int,
    *,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    ood_scores: np.ndarray | None = None,
    ood_threshold: float | None = None,
) -> tuple[Selection, PseudoLabels]:
    """The queue's order: the pseudo-label filters of ``config`` (entropy, then label propagation
    against the labelled cells' features), then ``select_for_labelling``. Cells whose OOD score
    exceeds ``ood_threshold`` are never pseudo-labelled; the most foreign of them come first, with
    the reason ``unlike any known class``, up to ``config.queue_ood_share`` of the ``n`` (the others
    wait for later batches), and the rest of the batch is chosen among the cells not flagged."""
    unlike = None
    if ood_scores is not None and ood_threshold is not None:
        unlike = np.asarray(ood_scores, dtype=np.float64) > ood_threshold
    use_lp = labelled_features is not None and len(set(np.asarray(labelled_y).tolist())) >= 2
    pseudo = filter_pseudo_labels(
        probs,
        features,
        labelled_features if use_lp else None,
        labelled_y if use_lp else None,
        entropy_threshold=config.entropy_threshold,
        use_propagation=use_lp,
        n_neighbors=config.lp_neighbors,
        confidence_threshold=config.lp_confidence,
        alpha=config.lp_alpha,
        unlike=unlike,
        prior_shift=config.pseudo_prior_shift,
    )
    if unlike is None or not unlike.any():
        selection = select_for_labelling(
            probs,
            features,
            n,
            strategy=strategy,
            outcomes=pseudo.outcome,
            labelled_features=labelled_features,
            seed=seed,
        )
        return selection, pseudo
    flagged = np.flatnonzero(unlike)
    flagged = flagged[np.argsort(-np.asarray(ood_scores)[flagged], kind="stable")]
    rest = np.flatnonzero(~unlike)
    # the share of the batch that goes to flagged cells, and more where too few cells are left unflagged
    # (an early model's loose threshold can flag nearly every cell: the batch still fills)
    take = min(len(flagged), n, max(math.ceil(config.queue_ood_share * n), n - len(rest)))
    foreign = flagged[:take]
    chosen = select_for_labelling(
        probs[rest],
        None if features is None else np.asarray(features)[rest],
        n - len(foreign),
        strategy=strategy,
        outcomes=pseudo.outcome[rest],
        labelled_features=labelled_features,
        seed=seed,
    )
    order = np.concatenate([foreign, rest[chosen.indices]]).astype(np.int64)
    reasons = [UNLIKE_ANY_CLASS] * len(foreign) + chosen.reasons
    return Selection(order, reasons, np.arange(len(order), 0, -1, dtype=np.float64)), pseudo
