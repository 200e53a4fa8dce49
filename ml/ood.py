"""How unlike every class it was taught a cell is: the out-of-distribution ("OOD") score.

A higher score means farther from the known classes. The methods, all computed from a
model's logits and penultimate features (``ml.infer.Predictions``):

- ``energy``: minus the log-sum-exp of the logits (Liu et al. 2020).
- ``cosine``: one minus the best cosine similarity to a class prototype (the mean unit feature
  of the class's training cells).
- ``mahalanobis``: the smallest Mahalanobis distance to a class mean, with one shared covariance
  estimated with Ledoit-Wolf shrinkage (few labels, many feature dimensions).
- ``knn``: the cosine distance to the k-th nearest training cell.
- ``mix``: energy plus mahalanobis, each standardised on the known validation cells.

``fit_ood`` chooses the method on validation cells of the known classes only, never on
unknown cells: each known class in turn plays the unknown one (its prototype, mean, logit
and training cells are left out) and the method with the best mean AUROC wins. The threshold
is the score below which ``target_tpr`` of the validation cells fall, so that share of cells
of known classes is kept (true-positive rate on known classes).

numpy in, numpy out; the state is a dict of tensors and plain values, so it travels inside a
checkpoint that ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OOD_METHODS: tuple[str, ...] = ("energy", "cosine", "mahalanobis", "knn", "mix")
UNLIKE_ANY_CLASS = "unlike any known class"
DEFAULT_TARGET_TPR = 0.95
KNN_K = 5
MAX_BANK = 5000


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """AUROC of telling ``unknown`` (positives, higher score) from ``known`` cells (ties count half)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    r_unknown = ranks[len(known) :].sum()
    n1, n0 = len(unknown), len(known)
    return float((r_unknown - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = DEFAULT_TARGET_TPR) -> float:
    """Share of ``unknown`` cells scored below the threshold that keeps ``tpr`` of the known cells."""
    threshold = float(np.quantile(np.asarray(known, np.float64), tpr))
    return float((np.asarray(unknown) <= threshold).mean()) if len(unknown) else float("nan")


@dataclass
class _Reference:
    """What the feature-space methods compare against: the training cells of the known classes."""

    means: np.ndarray  # C×D
    precision: np.ndarray  # D×D
    prototypes: np.ndarray  # C×D, unit
    bank: np.ndarray  # N×D, unit
    bank_y: np.ndarray  # N

    @classmethod
    def fit(cls, features: np.ndarray, y: np.ndarray, n_classes: int) -> _Reference:
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, np.float64)
        y = np.asarray(y, np.int64)
        d = features.shape[1]
        means = np.zeros((n_classes, d))
        prototypes = np.zeros((n_classes, d))
        unit = _unit(features)
        for c in range(n_classes):
            members = y == c
            if members.any():
                means[c] = features[members].mean(axis=0)
                prototypes[c] = unit[members].mean(axis=0)
        centred = features - means[y]
        precision = LedoitWolf().fit(centred).precision_ if len(features) > 1 else np.eye(d)
        if len(features) > MAX_BANK:
            keep = np.sort(np.random.default_rng(0).choice(len(features), MAX_BANK, replace=False))
            unit, y = unit[keep], y[keep]
        return cls(means, precision, _unit(prototypes), unit, y)


def _energy(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)[:, classes]
    top = z.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def _cosine(features: np.ndarray, ref: _Reference, classes: np.ndarray) -> np.ndarray:
    return 1.0 - (_unit(features) @ ref.prototypes[classes].T).max(axis=1)


def _mahalanobis(features: np.ndarray, ref: _Reference, classes: np.ndarray) -> np.ndarray:
    x = np.asarray(features, np.float64)
    best = np.full(len(x), np.inf)
    for c in classes:
        diff = x - ref.means[c]
        best = np.minimum(best, np.einsum("nd,de,ne->n", diff, ref.precision, diff))
    return np.sqrt(np.maximum(best, 0.0))


def _knn(features: np.ndarray, ref: _Reference, classes: np.ndarray, k: int = KNN_K) -> np.ndarray:
    bank = ref.bank[np.isin(ref.bank_y, classes)]
    if not len(bank):
        return np.ones(len(features))
    sims = _unit(features) @ bank.T
    k = min(k, bank.shape[0])
    kth = np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return 1.0 + kth  # 1 - (k-th largest similarity)


def _raw(method: str, logits: np.ndarray, features: np.ndarray, ref: _Reference, classes: np.ndarray) -> np.ndarray:
    if method == "energy":
        return _energy(logits, classes)
    if method == "cosine":
        return _cosine(features, ref, classes)
    if method == "mahalanobis":
        return _mahalanobis(features, ref, classes)
    if method == "knn":
        return _knn(features, ref, classes)
    raise ValueError(f"unknown OOD method {method!r}; choose from {OOD_METHODS}")


@dataclass
class OODScorer:
    """A fitted OOD score with its method and threshold (score > threshold: unlike any known class)."""

    method: str
    threshold: float
    reference: _Reference
    mix_stats: dict = field(default_factory=dict)  # {"energy": (mu, sigma), "mahalanobis": (mu, sigma)}
    target_tpr: float = DEFAULT_TARGET_TPR
    selection: dict = field(default_factory=dict)  # leave-one-class-out AUROC per method
    calibrated_on: str = "validation"

    @property
    def n_classes(self) -> int:
        return len(self.reference.means)

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The OOD score of each cell (higher: farther from the known classes)."""
        classes = np.arange(self.n_classes)
        return _score(self.method, logits, features, self.reference, classes, self.mix_stats)

    def is_unlike(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def summary(self) -> dict:
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "target_tpr": self.target_tpr,
            "selection_auroc": self.selection,
            "calibrated_on": self.calibrated_on,
        }

    def state(self) -> dict:
        """A checkpoint-safe dict (tensors, floats, strings)."""
        import torch

        ref = self.reference
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "target_tpr": float(self.target_tpr),
            "calibrated_on": self.calibrated_on,
            "selection": {k: float(v) for k, v in self.selection.items()},
            "mix_stats": {k: [float(v[0]), float(v[1])] for k, v in self.mix_stats.items()},
            "means": torch.from_numpy(ref.means.astype(np.float32)),
            "precision": torch.from_numpy(ref.precision.astype(np.float32)),
            "prototypes": torch.from_numpy(ref.prototypes.astype(np.float32)),
            "bank": torch.from_numpy(ref.bank.astype(np.float16)),
            "bank_y": torch.from_numpy(ref.bank_y.astype(np.int64)),
        }

    @classmethod
    def from_state(cls, state: dict) -> OODScorer:
        def arr(key: str, dtype=np.float64) -> np.ndarray:
            value = state[key]
            return np.asarray(value.float().numpy() if hasattr(value, "numpy") else value, dtype=dtype)

        ref = _Reference(arr("means"), arr("precision"), arr("prototypes"), arr("bank"), arr("bank_y", np.int64))
        return cls(
            method=state["method"],
            threshold=float(state["threshold"]),
            reference=ref,
            mix_stats={k: (float(v[0]), float(v[1])) for k, v in (state.get("mix_stats") or {}).items()},
            target_tpr=float(state.get("target_tpr", DEFAULT_TARGET_TPR)),
            selection=dict(state.get("selection") or {}),
            calibrated_on=state.get("calibrated_on", "validation"),
        )


def _score(
    method: str,
    logits: np.ndarray,
    features: np.ndarray,
    ref: _Reference,
    classes: np.ndarray,
    mix_stats: dict,
) -> np.ndarray:
    if method != "mix":
        return _raw(method, logits, features, ref, classes)
    total = np.zeros(len(features))
    for part in ("energy", "mahalanobis"):
        mu, sigma = mix_stats[part]
        total += (_raw(part, logits, features, ref, classes) - mu) / sigma
    return total


def _mix_stats(logits: np.ndarray, features: np.ndarray, ref: _Reference, classes: np.ndarray) -> dict:
    stats = {}
    for part in ("energy", "mahalanobis"):
        raw = _raw(part, logits, features, ref, classes)
        stats[part] = (float(raw.mean()), float(max(raw.std(), 1e-6)))
    return stats


def leave_one_class_out(
    method: str, ref: _Reference, val_logits: np.ndarray, val_features: np.ndarray, val_y: np.ndarray
) -> float:
    """Mean AUROC of ``method`` when each known class in turn is treated as the unknown one."""
    n_classes = len(ref.means)
    aurocs = []
    for held in range(n_classes):
        unknown = val_y == held
        if not unknown.any() or unknown.all():
            continue
        classes = np.asarray([c for c in range(n_classes) if c != held])
        known_mask = ~unknown
        stats = _mix_stats(val_logits[known_mask], val_features[known_mask], ref, classes) if method == "mix" else {}
        scores = _score(method, val_logits, val_features, ref, classes, stats)
        aurocs.append(auroc(scores[known_mask], scores[unknown]))
    return float(np.mean(aurocs)) if aurocs else float("nan")


def fit_ood(
    train_features: np.ndarray,
    train_y: np.ndarray,
    val_logits: np.ndarray,
    val_features: np.ndarray,
    val_y: np.ndarray,
    n_classes: int,
    *,
    method: str = "auto",
    target_tpr: float = DEFAULT_TARGET_TPR,
    calibrated_on: str = "validation",
) -> OODScorer:
    """Fit the reference on the training cells; choose the method (``auto``) and set the
    threshold on the validation cells, all of known classes."""
    ref = _Reference.fit(train_features, train_y, n_classes)
    val_logits = np.asarray(val_logits, np.float64)
    val_features = np.asarray(val_features, np.float64)
    val_y = np.asarray(val_y, np.int64)
    selection: dict[str, float] = {}
    if method == "auto":
        for candidate in OOD_METHODS:
            selection[candidate] = leave_one_class_out(candidate, ref, val_logits, val_features, val_y)
        finite = {k: v for k, v in selection.items() if np.isfinite(v)}
        method = max(finite, key=finite.get) if finite else "energy"
    elif method not in OOD_METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose from {OOD_METHODS} or auto")
    classes = np.arange(n_classes)
    mix_stats = _mix_stats(val_logits, val_features, ref, classes) if method == "mix" else {}
    scores = _score(method, val_logits, val_features, ref, classes, mix_stats)
    threshold = float(np.quantile(scores, target_tpr)) if len(scores) else float("inf")
    return OODScorer(method, threshold, ref, mix_stats, target_tpr, selection, calibrated_on)
