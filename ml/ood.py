"""How unlike every class it was taught a cell is: the out-of-distribution ("OOD") score.

A higher score means farther from the known classes. The methods, all computed from a
model's logits and penultimate features (``ml.infer.Predictions``):

- ``energy``: minus the log-sum-exp of the logits (Liu et al. 2020).
- ``msp``: minus the log of the top softmax probability (a monotone map of one minus the maximum softmax
  probability, Hendrycks & Gimpel 2017): how unsure the network is between its known classes, whatever the
  logits' scale.
- ``cosine``: one minus the best cosine similarity to a class prototype (the mean unit feature
  of the class's training cells).
- ``mahalanobis``: the smallest Mahalanobis distance to a class mean, with one shared covariance
  estimated with Ledoit-Wolf shrinkage (few labels, many feature dimensions).
- ``knn``: the cosine distance to the k-th nearest training cell.
- ``mix``: energy plus mahalanobis, each standardised on the known validation cells.
- ``mix-msp``: msp plus mahalanobis, the same way.
- ``knn-layers``: ``knn`` plus the same distance at each of the model's mid-level taps
  (``ood_taps``: each channel's spatial mean and sd, standardised per dimension on the training
  cells), each standardised on the known validation cells and summed.

And one that does not look at the network (``ml.morphology``: the stained nucleus nearest the
tile's centre, its size, shape and density), for cells whose network features look like a known
class although the cell is no white blood cell at all (a platelet called a neutrophil):

- ``morph``: the smallest Mahalanobis distance of the cell's descriptors to a class's Gaussian
  (its mean and its own Ledoit-Wolf covariance, on the known training cells).
- ``morph-sum`` / ``morph-max``: a network method (the ``base``) and ``morph``, each standardised
  on the known validation cells, then summed or the larger taken.
- ``morph-excess``: the base plus whatever of the standardised ``morph`` lies beyond
  ``MORPH_EXCESS_FROM``: an odd shape adds, a usual one takes nothing off (``morph-sum`` lets a
  white-cell-like shape pull down the score of an unknown white cell).

``fit_ood`` chooses the method on validation cells of the known classes only, never on
unknown cells (the rules below were set once, in development): each known class in turn plays
the unknown one (its prototype, mean, logit and training cells are left out) and the method with
the best mean AUROC wins. The threshold
is the score below which ``target_tpr`` of the validation cells fall, so that share of cells
of known classes is kept (true-positive rate on known classes).

Where the cells' descriptors are given, the score always combines the network with morphology
(which network method, and how: below). That rule
is not chosen on data, and cannot be: leaving a known class out asks "which white blood cell
is this", never "is this a white blood cell", so every held-out cell is a white blood cell and
the descriptors' test has nothing to find. A cell whose descriptors lie far from every known
class's training cells is by definition unlike them, and the threshold, set on the combined
score of the known validation cells, still keeps ``target_tpr`` of them. State without
descriptors (older checkpoints) scores with the network alone, as before.

The combination is always ``morph-excess`` over ``mix`` (``COMBINED_RULE``; leaving a known
class out still measures the others, for the record). The same argument holds the other way: an
unknown *white* cell (an immature granulocyte, a blast) has a white cell's nucleus, so its
descriptors lie inside the known classes' and, standardised and added in full, they only add
noise to the network's signal. And the network method that best tells known classes apart is not
the one that best finds a white cell of another kind. The rule was set on cells of unknown kinds
that no reported figure uses (docs/results/ood/README.md: the pbc-other cells outside the
eight-class test set, against the PBC validation cells), on two models: over every network base
``morph-excess`` beat ``morph-sum`` for immature granulocytes (by 0.04-0.10 AUROC) at a cost of at
most 0.026 on erythroblasts, and ``mix`` was the best base on both (mean AUROC over the three
kinds 0.939 / 0.932, against 0.906 / 0.898 for ``morph-sum`` over the base chosen by leaving a
known class out).

``msp`` and ``mix-msp`` as the base of ``morph-excess``, on the same kind of cells and two later models
(docs/results/ood/README.md, tenth session), stayed below ``mix`` on both (mean 0.928 / 0.944 and
0.947 / 0.953 against 0.951 / 0.962), so the rule did not change.

``knn-layers`` is opt-in (``TrainConfig.ood_layers``: one more candidate where the network method
is chosen by leaving a known class out, or named): as the base of ``morph-excess`` on the same
cells it scored 0.934 / 0.907, below ``mix`` on both models.

numpy in, numpy out; the state is a dict of tensors and plain values, so it travels inside a
checkpoint that ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OOD_METHODS: tuple[str, ...] = ("energy", "msp", "cosine", "mahalanobis", "knn", "mix", "mix-msp")  # penultimate only
MIX_PARTS: dict[str, tuple[str, ...]] = {  # what each mix adds, each part standardised
    "mix": ("energy", "mahalanobis"),
    "mix-msp": ("msp", "mahalanobis"),
}
LAYERS_METHOD = "knn-layers"  # knn at the model's ``ood_taps`` as well: needs ``Predictions.layers``
NETWORK_METHODS: tuple[str, ...] = (*OOD_METHODS, LAYERS_METHOD)
MORPH_METHODS: tuple[str, ...] = ("morph", "morph-sum", "morph-max", "morph-excess")
COMBINED_METHODS: tuple[str, ...] = ("morph-sum", "morph-max", "morph-excess")  # a network base and morph
ALL_METHODS: tuple[str, ...] = NETWORK_METHODS + MORPH_METHODS
UNLIKE_ANY_CLASS = "unlike any known class"
DEFAULT_TARGET_TPR = 0.95
KNN_K = 5
MAX_BANK = 5000
MORPH_RIDGE = 1e-3  # added to each standardised descriptor covariance, so a flat class stays invertible
MORPH_EXCESS_FROM = 1.0  # morph-excess counts the morphology distance beyond this many sd of the known cells
COMBINED_RULE = ("morph-excess", "mix")  # ``auto``'s (method, base) where descriptors are given (docstring)


class LayersRequired(ValueError):
    """The scorer compares the model's mid-level features, and none were given."""

    status = 422

    def __init__(self, method: str) -> None:
        super().__init__(
            f"the OOD method {method!r} needs the model's mid-level features: predict the cells with "
            "ml.infer.predict(model, x, layers=True) and pass layers=predictions.layers"
        )


class MorphologyRequired(ValueError):
    """The scorer combines the network with morphology descriptors, and no cell images were given."""

    status = 422

    def __init__(self, method: str) -> None:
        super().__init__(
            f"the OOD method {method!r} needs the cells' morphology descriptors: pass the model-input "
            "images (OODScorer.score(logits, features, images=x)) or descriptors=ml.morphology.describe(x)"
        )


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
    layers: dict[str, _LayerBank] = field(default_factory=dict)  # by ``ood_taps`` name

    @classmethod
    def fit(
        cls, features: np.ndarray, y: np.ndarray, n_classes: int, layers: dict[str, np.ndarray] | None = None
    ) -> _Reference:
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
        keep = _bank_rows(len(features))
        banks = {name: _LayerBank.fit(x[keep], y[keep]) for name, x in (layers or {}).items()}
        return cls(means, precision, _unit(prototypes), unit[keep], y[keep], banks)


def _bank_rows(n: int) -> np.ndarray:
    """The training cells a kNN bank keeps: all, or a fixed draw of ``MAX_BANK``."""
    if n <= MAX_BANK:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_BANK, replace=False))


def _kth_distance(unit_x: np.ndarray, bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """One minus the cosine similarity of each row to its k-th nearest bank row."""
    if not len(bank):
        return np.ones(len(unit_x))
    sims = unit_x @ bank.T
    k = min(k, bank.shape[0])
    return 1.0 + np.partition(-sims, k - 1, axis=1)[:, k - 1]


@dataclass
class _LayerBank:
    """One mid-level tap's pooled features of the known training cells, standardised per dimension
    (channels of a mid-level map differ in scale by orders of magnitude) and then unit length."""

    centre: np.ndarray  # D
    scale: np.ndarray  # D
    bank: np.ndarray  # N×D, standardised and unit
    bank_y: np.ndarray  # N

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> _LayerBank:
        x = np.asarray(x, np.float64)
        centre, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        return cls(centre, scale, _unit((x - centre) / scale), np.asarray(y, np.int64))

    def distance(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        unit = _unit((np.asarray(x, np.float64) - self.centre) / self.scale)
        return _kth_distance(unit, self.bank[np.isin(self.bank_y, classes)])


@dataclass
class _MorphReference:
    """The known training cells' morphology descriptors: a Gaussian per class (Ledoit-Wolf)."""

    centre: np.ndarray  # K, to standardise descriptors
    scale: np.ndarray  # K
    means: np.ndarray  # C×K, standardised; NaN rows for classes with no training cell
    precisions: np.ndarray  # C×K×K

    @classmethod
    def fit(cls, descriptors: np.ndarray, y: np.ndarray, n_classes: int) -> _MorphReference:
        from sklearn.covariance import LedoitWolf

        d = np.asarray(descriptors, np.float64)
        y = np.asarray(y, np.int64)
        centre, scale = d.mean(axis=0), np.maximum(d.std(axis=0), 1e-6)
        z = (d - centre) / scale
        k = z.shape[1]
        means = np.full((n_classes, k), np.nan)
        for c in range(n_classes):
            if (y == c).any():
                means[c] = z[y == c].mean(axis=0)
        centred = z - np.nan_to_num(means[y])
        pooled = LedoitWolf().fit(centred).covariance_ if len(z) > 1 else np.eye(k)
        precisions = np.zeros((n_classes, k, k))
        for c in range(n_classes):
            members = z[y == c]
            # a class's own covariance once it has a few cells per dimension, the pooled one before
            cov = LedoitWolf().fit(members).covariance_ if len(members) >= 2 * k else pooled
            precisions[c] = np.linalg.inv(cov + MORPH_RIDGE * np.eye(k))
        return cls(centre, scale, means, precisions)

    def distance(self, descriptors: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The smallest Mahalanobis distance to a class among ``classes`` (inf with none fitted)."""
        z = (np.asarray(descriptors, np.float64) - self.centre) / self.scale
        best = np.full(len(z), np.inf)
        for c in classes:
            if np.isnan(self.means[c]).any():
                continue
            diff = z - self.means[c]
            best = np.minimum(best, np.einsum("nd,de,ne->n", diff, self.precisions[c], diff))
        return np.sqrt(np.maximum(best, 0.0))


def _energy(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)[:, classes]
    top = z.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def _msp(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """-log of the top softmax probability over ``classes``: log1p of the other classes' share relative
    to the top one, which keeps its resolution where the probability is within 1e-16 of one (a network
    sure of most cells would tie them all at zero otherwise)."""
    z = np.asarray(logits, np.float64)[:, classes]
    top = z.argmax(axis=1)
    others = np.exp(z - z[np.arange(len(z)), top][:, None])
    others[np.arange(len(z)), top] = 0.0
    return np.log1p(others.sum(axis=1))


def _cosine(features: np.ndarray, ref: _Reference, classes: np.ndarray) -> np.ndarray:
    return 1.0 - (_unit(features) @ ref.prototypes[classes].T).max(axis=1)


def _mahalanobis(features: np.ndarray, ref: _Reference, classes: np.ndarray) -> np.ndarray:
    x = np.asarray(features, np.float64)
    best = np.full(len(x), np.inf)
    for c in classes:
        diff = x - ref.means[c]
        best = np.minimum(best, np.einsum("nd,de,ne->n", diff, ref.precision, diff))
    return np.sqrt(np.maximum(best, 0.0))


def _knn(features: np.ndarray, ref: _Reference, classes: np.ndarray) -> np.ndarray:
    return _kth_distance(_unit(features), ref.bank[np.isin(ref.bank_y, classes)])


def _raw(
    method: str,
    logits: np.ndarray,
    features: np.ndarray,
    ref: _Reference,
    classes: np.ndarray,
    layers: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    if method.startswith("layer:"):
        name = method.removeprefix("layer:")
        return ref.layers[name].distance(layers[name], classes)
    if method == "energy":
        return _energy(logits, classes)
    if method == "msp":
        return _msp(logits, classes)
    if method == "cosine":
        return _cosine(features, ref, classes)
    if method == "mahalanobis":
        return _mahalanobis(features, ref, classes)
    if method == "knn":
        return _knn(features, ref, classes)
    raise ValueError(f"unknown OOD method {method!r}; choose from {NETWORK_METHODS}")


@dataclass
class OODScorer:
    """A fitted OOD score with its method and threshold (score > threshold: unlike any known class)."""

    method: str
    threshold: float
    reference: _Reference
    # each part's (mu, sigma) on the known validation cells, for the methods that add parts (``_parts_of``)
    mix_stats: dict = field(default_factory=dict)
    target_tpr: float = DEFAULT_TARGET_TPR
    selection: dict = field(default_factory=dict)  # leave-one-class-out AUROC per method
    calibrated_on: str = "validation"
    morph: _MorphReference | None = None
    base: str | None = None  # the network method of morph-sum / morph-max
    combine_stats: dict = field(default_factory=dict)  # {"base": (mu, sigma), "morph": (mu, sigma)}
    # the side of the training tiles the descriptors were taken from: a model trained at 32 px saw
    # 32 px cells, so 64 px cells are brought to 32 px first and described the same way
    morph_size: int | None = None

    @property
    def n_classes(self) -> int:
        return len(self.reference.means)

    @property
    def uses_morphology(self) -> bool:
        return self.method in MORPH_METHODS

    @property
    def uses_layers(self) -> bool:
        return LAYERS_METHOD in (self.method, self.base)

    def score(
        self,
        logits: np.ndarray,
        features: np.ndarray,
        images=None,
        descriptors: np.ndarray | None = None,
        layers: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The OOD score of each cell (higher: farther from the known classes). A morphology
        method needs the cells' model-input ``images`` (uint8) or their ``descriptors``; ``knn-layers``
        (alone or as the base) the ``layers`` of ``ml.infer.predict(layers=True)``."""
        classes = np.arange(self.n_classes)
        if self.uses_layers and layers is None:
            raise LayersRequired(self.method if self.method == LAYERS_METHOD else f"{self.method} on {LAYERS_METHOD}")
        if not self.uses_morphology:
            return _score(self.method, logits, features, self.reference, classes, self.mix_stats, layers)
        if descriptors is None:
            if images is None:
                raise MorphologyRequired(self.method)
            from ml.morphology import describe

            descriptors = describe(self._at_morph_size(images))
        parts = _Parts(logits, features, descriptors, self.reference, self.morph, layers)
        return parts.score(self.method, self.base, classes, self.mix_stats, self.combine_stats)

    def _at_morph_size(self, images):
        if not self.morph_size or images.shape[-1] == self.morph_size or images.shape[1] != 3:
            return images
        import torch

        from ml.data import resize

        return resize(torch.as_tensor(images), self.morph_size)

    def is_unlike(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def summary(self) -> dict:
        out = {
            "method": self.method,
            "threshold": float(self.threshold),
            "target_tpr": self.target_tpr,
            "selection_auroc": self.selection,
            "calibrated_on": self.calibrated_on,
        }
        if self.base is not None:
            out["base"] = self.base
        return out

    def state(self) -> dict:
        """A checkpoint-safe dict (tensors, floats, strings)."""
        import torch

        ref = self.reference
        state = {
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
        if ref.layers:
            state["layers"] = {
                name: {
                    "centre": torch.from_numpy(bank.centre.astype(np.float32)),
                    "scale": torch.from_numpy(bank.scale.astype(np.float32)),
                    "bank": torch.from_numpy(bank.bank.astype(np.float16)),
                    "bank_y": torch.from_numpy(bank.bank_y.astype(np.int64)),
                }
                for name, bank in ref.layers.items()
            }
        if self.morph is not None:
            state["morph"] = {
                "centre": torch.from_numpy(self.morph.centre.astype(np.float64)),
                "scale": torch.from_numpy(self.morph.scale.astype(np.float64)),
                "means": torch.from_numpy(self.morph.means.astype(np.float64)),
                "precisions": torch.from_numpy(self.morph.precisions.astype(np.float64)),
            }
            state["base"] = self.base
            state["morph_size"] = int(self.morph_size) if self.morph_size else None
            state["combine_stats"] = {k: [float(v[0]), float(v[1])] for k, v in self.combine_stats.items()}
        return state

    @classmethod
    def from_state(cls, state: dict) -> OODScorer:
        def arr(value, dtype=np.float64) -> np.ndarray:
            return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=dtype)

        def bank(value) -> np.ndarray:
            return arr(value.float() if hasattr(value, "float") else value)

        layers = {
            name: _LayerBank(arr(b["centre"]), arr(b["scale"]), bank(b["bank"]), arr(b["bank_y"], np.int64))
            for name, b in (state.get("layers") or {}).items()
        }
        ref = _Reference(
            arr(state["means"]),
            arr(state["precision"]),
            arr(state["prototypes"]),
            bank(state["bank"]),
            arr(state["bank_y"], np.int64),
            layers,
        )
        morph = None
        if state.get("morph"):
            m = state["morph"]
            morph = _MorphReference(arr(m["centre"]), arr(m["scale"]), arr(m["means"]), arr(m["precisions"]))
        return cls(
            method=state["method"],
            threshold=float(state["threshold"]),
            reference=ref,
            mix_stats={k: (float(v[0]), float(v[1])) for k, v in (state.get("mix_stats") or {}).items()},
            target_tpr=float(state.get("target_tpr", DEFAULT_TARGET_TPR)),
            selection=dict(state.get("selection") or {}),
            calibrated_on=state.get("calibrated_on", "validation"),
            morph=morph,
            base=state.get("base"),
            combine_stats={k: (float(v[0]), float(v[1])) for k, v in (state.get("combine_stats") or {}).items()},
            morph_size=state.get("morph_size"),
        )


def _parts_of(method: str, ref: _Reference) -> tuple[str, ...] | None:
    """What a method that adds standardised parts adds (None: a single score). ``knn-layers``: the
    kNN distance at the penultimate layer and at each mid-level tap the reference holds."""
    if method in MIX_PARTS:
        return MIX_PARTS[method]
    if method == LAYERS_METHOD:
        return ("knn", *(f"layer:{name}" for name in ref.layers))
    return None


def _score(
    method: str,
    logits: np.ndarray,
    features: np.ndarray,
    ref: _Reference,
    classes: np.ndarray,
    mix_stats: dict,
    layers: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    parts = _parts_of(method, ref)
    if parts is None:
        return _raw(method, logits, features, ref, classes, layers)
    return sum(_z(_raw(part, logits, features, ref, classes, layers), mix_stats[part]) for part in parts)


def _mix_stats(
    logits: np.ndarray,
    features: np.ndarray,
    ref: _Reference,
    classes: np.ndarray,
    method: str = "mix",
    layers: dict[str, np.ndarray] | None = None,
) -> dict:
    parts = _parts_of(method, ref) or ()
    return {part: _mean_sd(_raw(part, logits, features, ref, classes, layers)) for part in parts}


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    finite = x[np.isfinite(x)]
    return (float(finite.mean()), float(max(finite.std(), 1e-6))) if len(finite) else (0.0, 1.0)


def _z(x: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    """``x`` standardised by (mean, sd) measured on known cells: how ``mix`` and ``morph-*`` add scores."""
    return (x - stats[0]) / stats[1]


@dataclass
class _Parts:
    """One set of cells with everything any method scores: logits, features, descriptors, layers."""

    logits: np.ndarray
    features: np.ndarray
    descriptors: np.ndarray | None
    ref: _Reference
    morph: _MorphReference | None
    layers: dict[str, np.ndarray] | None = None

    def network(self, method: str, classes: np.ndarray, mix_stats: dict) -> np.ndarray:
        return _score(method, self.logits, self.features, self.ref, classes, mix_stats, self.layers)

    def stats(self, method: str, base: str | None, classes: np.ndarray, known: np.ndarray) -> tuple[dict, dict]:
        """The parts' (``_parts_of``) and the combination's statistics of ``method`` on the ``known`` cells."""
        network = base if method in COMBINED_METHODS else method
        mix = {}
        if _parts_of(network, self.ref) is not None:
            layers = {name: x[known] for name, x in self.layers.items()} if self.layers else None
            mix = _mix_stats(self.logits[known], self.features[known], self.ref, classes, network, layers)
        combine = {}
        if method in COMBINED_METHODS:
            combine["base"] = _mean_sd(self.network(base, classes, mix)[known])
            combine["morph"] = _mean_sd(self.morph.distance(self.descriptors[known], classes))
        return mix, combine

    def score(self, method: str, base: str | None, classes: np.ndarray, mix: dict, combine: dict) -> np.ndarray:
        if method not in MORPH_METHODS:
            return self.network(method, classes, mix)
        if self.morph is None or self.descriptors is None:
            raise MorphologyRequired(method)
        morph = self.morph.distance(self.descriptors, classes)
        if method == "morph":
            return morph
        z_base, z_morph = _z(self.network(base, classes, mix), combine["base"]), _z(morph, combine["morph"])
        if method == "morph-sum":
            return z_base + z_morph
        if method == "morph-max":
            return np.maximum(z_base, z_morph)
        # morph-excess: a descriptor farther than usual from every class adds; one nearer than usual
        # takes nothing off (a cell of a kind unlike any class can look like a usual white cell)
        return z_base + np.maximum(z_morph - MORPH_EXCESS_FROM, 0.0)


def _leave_one_class_out(method: str, base: str | None, parts: _Parts, val_y: np.ndarray) -> float:
    n_classes = len(parts.ref.means)
    aurocs = []
    for held in range(n_classes):
        unknown = val_y == held
        if not unknown.any() or unknown.all():
            continue
        classes = np.asarray([c for c in range(n_classes) if c != held])
        mix, combine = parts.stats(method, base, classes, ~unknown)
        scores = parts.score(method, base, classes, mix, combine)
        aurocs.append(auroc(scores[~unknown], scores[unknown]))
    return float(np.mean(aurocs)) if aurocs else float("nan")


def leave_one_class_out(
    method: str, ref: _Reference, val_logits: np.ndarray, val_features: np.ndarray, val_y: np.ndarray
) -> float:
    """Mean AUROC of network ``method`` when each known class in turn is treated as the unknown one."""
    return _leave_one_class_out(method, None, _Parts(val_logits, val_features, None, ref, None), val_y)


def _best(selection: dict[str, float], candidates: tuple[str, ...], default: str) -> str:
    finite = {k: selection[k] for k in candidates if k in selection and np.isfinite(selection[k])}
    return max(finite, key=finite.get) if finite else default


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
    train_descriptors: np.ndarray | None = None,
    val_descriptors: np.ndarray | None = None,
    descriptor_size: int | None = None,
    train_layers: dict[str, np.ndarray] | None = None,
    val_layers: dict[str, np.ndarray] | None = None,
) -> OODScorer:
    """Fit the reference on the training cells; choose the method (``auto``) and set the
    threshold on the validation cells, all of known classes. With both cells' morphology
    descriptors (``ml.morphology.describe``), ``auto`` combines the network with them (module
    docstring); ``descriptor_size``: the side of the tiles they were taken from. With both cells'
    mid-level ``layers`` (``ml.infer.predict(layers=True)``), ``knn-layers`` is a candidate too."""
    if method != "auto" and method not in ALL_METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose from {ALL_METHODS} or auto")
    with_layers = bool(train_layers) and val_layers is not None and len(train_features) > 1
    if method == LAYERS_METHOD and not with_layers:
        raise LayersRequired(method)
    ref = _Reference.fit(train_features, train_y, n_classes, train_layers if with_layers else None)
    val_y = np.asarray(val_y, np.int64)
    morph = None
    if train_descriptors is not None and val_descriptors is not None and len(train_descriptors) > 1:
        morph = _MorphReference.fit(train_descriptors, train_y, n_classes)
    elif method in MORPH_METHODS:
        raise MorphologyRequired(method)
    parts = _Parts(
        np.asarray(val_logits, np.float64),
        np.asarray(val_features, np.float64),
        None if morph is None else np.asarray(val_descriptors, np.float64),
        ref,
        morph,
        {name: np.asarray(x, np.float64) for name, x in val_layers.items()} if with_layers else None,
    )
    selection: dict[str, float] = {}
    base = None
    if method == "auto" or method in COMBINED_METHODS:
        network = NETWORK_METHODS if with_layers else OOD_METHODS
        for candidate in network:
            selection[candidate] = _leave_one_class_out(candidate, None, parts, val_y)
        base = _best(selection, network, "energy")
        if morph is not None:
            if method == "auto":
                method, base = COMBINED_RULE  # the rule of the module docstring, not the selection's
            for candidate in MORPH_METHODS:
                selection[candidate] = _leave_one_class_out(candidate, base, parts, val_y)
        elif method == "auto":
            method, base = base, None
    if method not in COMBINED_METHODS:
        base = None
    classes = np.arange(n_classes)
    known = np.ones(len(val_y), dtype=bool)
    mix_stats, combine_stats = parts.stats(method, base, classes, known)
    scores = parts.score(method, base, classes, mix_stats, combine_stats)
    threshold = float(np.quantile(scores, target_tpr)) if len(scores) else float("inf")
    return OODScorer(
        method,
        threshold,
        ref,
        mix_stats,
        target_tpr,
        selection,
        calibrated_on,
        morph=morph if method in MORPH_METHODS else None,
        base=base,
        combine_stats=combine_stats,
        morph_size=descriptor_size if method in MORPH_METHODS else None,
    )
