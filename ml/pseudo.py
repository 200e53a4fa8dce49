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


def pool_prior_shift(
    probs: np.ndarray, train_prior: np.ndarray | None = None, max_iter: int = 200, tol: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions re-weighted to the unlabelled pool's own class prior, estimated by EM
    (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a priori
    probabilities"). A model trained on class-balanced batches predicts as if every class were
    equally common; in a pool where one class is rare (PBC's immature granulocytes: 2 % of the
    eight-class pool) that over-calls it, and its pseudo-labels fill with other classes' cells.

    ``train_prior``: the prior the model was trained under (None: uniform, as class-balanced
    sampling makes it). Returns the adjusted probabilities (rows sum to 1) and the estimated prior."""
    p = np.asarray(probs, dtype=np.float64)
    n_classes = p.shape[1]
    base = np.full(n_classes, 1.0 / n_classes) if train_prior is None else np.asarray(train_prior, dtype=np.float64)
    prior = base.copy()
    adjusted = p
    for _ in range(max_iter):
        adjusted = reweight_to_prior(p, prior, base)
        new = adjusted.mean(axis=0)
        done = np.abs(new - prior).max() < tol
        prior = new
        if done:
            break
    return adjusted, prior


def reweight_to_prior(probs: np.ndarray, prior: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Posteriors of a model trained under the class prior ``base`` (None: uniform) moved to ``prior``
    by Bayes' rule: each class's probability times prior / base, rows renormalised."""
    p = np.asarray(probs, dtype=np.float64)
    base = np.full(p.shape[1], 1.0 / p.shape[1]) if base is None else base
    weighted = p * (np.asarray(prior, dtype=np.float64) / base)
    return weighted / np.maximum(weighted.sum(axis=1, keepdims=True), 1e-300)


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
    unlike: np.ndarray | None = None  # bool per sample: held out as unlike any known class (None: no filter)

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
    prior_shift: bool = False,
) -> PseudoLabels:
    """Entropy filter (set 1) and, with ``use_propagation``, label propagation (set 2).

    Set 2 keeps the set-1 cells whose propagated confidence is >= ``confidence_threshold``
    and whose propagated label agrees with the model's.

    ``min_class_fraction`` (0 = the paper's filter) guards the classes the model is least
    sure of: if fewer than that fraction of the cells predicted as a class pass the entropy
    threshold, its lowest-entropy cells up to that fraction enter set 1 anyway, and label
    propagation has the last word on them.

    ``unlike`` (bool per row) marks cells unlike any known class (``ml.ood``): they are rejected
    whatever their entropy, so they are never pseudo-labelled; the funnel counts them as ``ood``.

    ``prior_shift`` judges (entropy, label, guard) on the predictions re-weighted to the pool's
    estimated class prior (``pool_prior_shift``), estimated over the cells not marked ``unlike``;
    the funnel gains ``pool_prior``."""
    probs = np.asarray(probs, dtype=np.float64)
    foreign = np.zeros(len(probs), dtype=bool) if unlike is None else np.asarray(unlike, dtype=bool)
    pool_prior = None
    if prior_shift and (~foreign).any():
        _, pool_prior = pool_prior_shift(probs[~foreign])
        probs = reweight_to_prior(probs, pool_prior)  # every row, the foreign ones too
    n = len(probs)
    label = probs.argmax(axis=1).astype(np.int64)
    confidence = probs.max(axis=1).astype(np.float32)
    h = entropy(probs)
    set1 = (h <= entropy_threshold) & ~foreign
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
    if pool_prior is not None:
        funnel["pool_prior"] = [round(float(v), 4) for v in pool_prior]
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
    return PseudoLabels(
        outcome=outcome.astype(str),
        label=label,
        confidence=confidence,
        funnel=funnel,
        unlike=None if unlike is None else foreign,
    )
