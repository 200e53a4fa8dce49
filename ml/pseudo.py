"""Pseudo-labels (paper §III-D): entropy filter (set 1), then label propagation (set 2).

numpy in, numpy out; the model's predictions and features come from ``ml.infer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REJECTED = "rejected"  # failed the entropy filter
PASSED_ENTROPY = "passed_entropy"  # in set 1 only (propagation rejected it, or did not run)
PASSED_PROPAGATION = "passed_propagation"  # in set 2: passed both filters


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def entropy_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """True where the prediction is confident enough: entropy <= threshold."""
    return entropy(probs) <= threshold


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def propagate(
    labelled_features: np.ndarray,
    labelled_y: np.ndarray,
    unlabelled_features: np.ndarray,
    n_neighbors: int = 8,
    alpha: float = 0.2,
    max_iter: int = 100,
) -> np.ndarray:
    """LabelSpreading over a kNN graph of all the features; returns the unlabelled rows'
    class distributions (N_u × C; rows sum to 1, or are all zero where nothing reached)."""
    from sklearn.semi_supervised import LabelSpreading

    x = _l2_normalise(np.concatenate([labelled_features, unlabelled_features]))
    y = np.concatenate([np.asarray(labelled_y, dtype=np.int64), -np.ones(len(unlabelled_features), dtype=np.int64)])
    k = max(1, min(n_neighbors, len(x) - 1))
    model = LabelSpreading(kernel="knn", n_neighbors=k, alpha=alpha, max_iter=max_iter)
    model.fit(x, y)
    dist = np.nan_to_num(model.label_distributions_[len(labelled_features) :], nan=0.0)
    # label_distributions_ columns follow model.classes_ (the labels present); map to 0..C-1
    n_classes = int(max(np.max(labelled_y), -1)) + 1
    full = np.zeros((len(dist), n_classes))
    full[:, model.classes_] = dist
    return full


@dataclass
class PseudoLabels:
    outcome: np.ndarray  # str per unlabelled sample: rejected / passed_entropy / passed_propagation
    label: np.ndarray  # int64, the model's prediction (the pseudo-label)
    confidence: np.ndarray  # float32: propagated confidence where propagation ran, else max prob
    funnel: dict  # {"unlabelled", "set1", "set2"} (set2 is None without propagation)

    @property
    def accepted(self) -> np.ndarray:
        """Indices of the pseudo-labels used for training: set 2 with propagation, else set 1."""
        wanted = PASSED_PROPAGATION if self.funnel.get("set2") is not None else PASSED_ENTROPY
        return np.flatnonzero(self.outcome == wanted)


def filter_pseudo_labels(
    probs: np.ndarray,
    features: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
    labelled_y: np.ndarray | None = None,
    entropy_threshold: float = 0.01,
    use_propagation: bool = True,
    n_neighbors: int = 8,
    confidence_threshold: float = 0.8,
    alpha: float = 0.2,
    min_class_fraction: float = 0.0,
    unlike: np.ndarray | None = None,
) -> PseudoLabels:
    """Entropy filter (set 1) and, with ``use_propagation``, label propagation (set 2).

    Set 2 keeps the set-1 cells whose propagated confidence is >= ``confidence_threshold``
    and whose propagated label agrees with the model's.

    ``min_class_fraction`` (0 = the paper's filter) guards the classes the model is least
    sure of: if fewer than that fraction of the cells predicted as a class pass the entropy
    threshold, its lowest-entropy cells up to that fraction enter set 1 anyway, and label
    propagation has the last word on them.

    ``unlike`` (bool per row) marks cells unlike any known class (``ml.ood``): they are rejected
    whatever their entropy, so they are never pseudo-labelled; the funnel counts them as ``ood``."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    label = probs.argmax(axis=1).astype(np.int64)
    confidence = probs.max(axis=1).astype(np.float32)
    h = entropy(probs)
    set1 = h <= entropy_threshold
    foreign = np.zeros(n, dtype=bool) if unlike is None else np.asarray(unlike, dtype=bool)
    set1 &= ~foreign
    if min_class_fraction > 0:
        for c in np.unique(label):
            members = np.flatnonzero((label == c) & ~foreign)
            quota = int(np.ceil(min_class_fraction * len(members)))
            if set1[members].sum() < quota:
                set1[members[np.argsort(h[members], kind="stable")[:quota]]] = True
    outcome = np.where(set1, PASSED_ENTROPY, REJECTED).astype(object)
    funnel: dict = {"unlabelled": int(n), "set1": int(set1.sum()), "set2": None}
    if unlike is not None:
        funnel["ood"] = int(foreign.sum())
    if use_propagation:
        if features is None or labelled_features is None or labelled_y is None:
            raise ValueError("label propagation needs features of the unlabelled and labelled cells")
        idx1 = np.flatnonzero(set1)
        if len(idx1):
            dist = propagate(labelled_features, labelled_y, np.asarray(features)[idx1], n_neighbors, alpha)
            lp_label = dist.argmax(axis=1)
            lp_conf = dist.max(axis=1)
            keep = (lp_conf >= confidence_threshold) & (lp_label == label[idx1])
            outcome[idx1[keep]] = PASSED_PROPAGATION
            confidence[idx1] = lp_conf.astype(np.float32)
        funnel["set2"] = int((outcome == PASSED_PROPAGATION).sum())
    return PseudoLabels(outcome=outcome.astype(str), label=label, confidence=confidence, funnel=funnel)
