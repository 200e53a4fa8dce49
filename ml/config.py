"""Training configuration: one dataclass, three profiles, the methods by name.

No torch here: the web process and the CLI can read and validate configs cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

# Paper Table 3 names A-D, plus FixMatch (a modern baseline) and its combination with the
# paper's pseudo-label filter (the best method on PBC; see docs/results.md).
METHODS: tuple[str, ...] = (
    "supervised",
    "pseudo-single",  # Table 3 A: single model, entropy-filtered pseudo-labels
    "label-propagation",  # Table 3 B: single model, entropy filter + label propagation
    "mean-teacher",  # Table 3 C: mean teacher, entropy-filtered pseudo-labels
    "mean-teacher+lp",  # Table 3 D: the paper's method
    "fixmatch",
    "fixmatch+lp",
    # The abstract's pipeline: a supervised model pre-trained on the labels pseudo-labels the
    # rest (entropy filter + label propagation); a mean teacher is then trained on both.
    "lp+mean-teacher",
)
# The product's default: the best method at 20 labels per class on PBC, with the smallest spread
# over seeds (docs/results.md, cpu profile, seeds 0-2: 95.8 ± 0.6 %, against 94.7 ± 0.6 %
# supervised and 95.2 ± 1.2 % for the paper's mean-teacher+lp with a pre-trained student).
DEFAULT_METHOD = "lp+mean-teacher"
PROFILES: tuple[str, ...] = ("paper", "cpu", "tiny")

# How each method trains: the per-step algorithm of round 1, which pseudo-label filter runs
# between rounds (None, "entropy" or "lp" = entropy then label propagation), how many rounds,
# and (optionally) the algorithm of the later rounds.
METHOD_SPECS: dict[str, tuple] = {
    "supervised": ("supervised", None, 1),
    "pseudo-single": ("supervised", "entropy", 2),
    "label-propagation": ("supervised", "lp", 2),
    "mean-teacher": ("mean-teacher", "entropy", 2),
    "mean-teacher+lp": ("mean-teacher", "lp", 2),
    "fixmatch": ("fixmatch", None, 1),
    "fixmatch+lp": ("fixmatch", "lp", 2),
    "lp+mean-teacher": ("supervised", "lp", 2, "mean-teacher"),
}


@dataclass
class TrainConfig:
    method: str = DEFAULT_METHOD
    profile: str = "cpu"
    arch: str = "vgg"  # "vgg" (the paper's net) or "resnet50"
    width: float = 0.25
    image_size: int = 64
    # Training length. An epoch is ``steps_per_epoch`` steps; None means one pass over the
    # unlabelled pool (semi-supervised) or the labelled pool (supervised).
    epochs: int = 20
    round_epochs: int = 10  # epochs of each later round (warm-started, new cosine cycle)
    round_lr_scale: float = 0.2  # peak learning rate of warm-started stages, as a fraction of lr
    # Epochs of supervised training on the labels (whole batches of them) before a mean
    # teacher's round 1, which then fine-tunes that student with its teacher starting as a copy
    # of it: the abstract's "VGG network pre-trained with a small amount of labelled data".
    pretrain_epochs: int = 0
    # Later rounds start from a fresh initialisation at the full learning rate (self-training
    # as in Noisy Student) instead of fine-tuning the previous round's model.
    round_reinit: bool = False
    # Later rounds: the share of each labelled half-batch drawn from the true labels (the rest
    # from the pseudo-labels), or None to sample labels and pseudo-labels as one pool.
    true_label_share: float | None = None
    steps_per_epoch: int | None = None
    # Later rounds draw the unlabelled half-batch class-balanced by the previous round's predicted
    # class (issue 15's lever: basophils, lymphocytes and monocytes hold almost all errors and
    # are a third of the pool); False: uniformly over the pool, as the paper.
    balance_unlabelled: bool = False
    # Mean-teacher stages: the student sees the unlabelled half-batch strongly augmented (colour
    # jitter and cutout beside translation and flips; ml.augment.Augmenter.strong) while the
    # teacher keeps the weak view: FixMatch's recipe inside the mean teacher (issue 15's lever).
    strong_student: bool = False
    # Supervised stages (lp+mean-teacher's round 1): mixup of the labelled cells with Beta(mixup, mixup) weights
    # (Zhang et al. 2018); 0: off.
    mixup: float = 0.0
    # Mean-teacher stages: interpolation consistency (ICT, Verma et al. 2019): the student sees the
    # unlabelled half-batch mixed with a shuffle of itself at a Beta(a, a) weight, and is held to the same
    # mix of the teacher's softmax on the unmixed cells; 0: the paper's consistency on unmixed cells.
    consistency_mixup: float = 0.0
    rounds: int | None = None  # None: the method's default (METHOD_SPECS)
    batch_size: int = 40
    labelled_per_batch: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup_fraction: float = 0.03
    ema_decay: float = 0.97
    consistency_weight: float = 10.0
    consistency_rampup: float = 0.3  # fraction of the first round over which beta ramps up
    dropout: float = 0.2
    # Pseudo-labels (paper §III-D, Table 4)
    entropy_threshold: float = 0.01
    lp_neighbors: int = 8
    lp_confidence: float = 0.8
    lp_alpha: float = 0.2
    # 0: the paper's filter. On PBC at 20 labels/class the paper's entropy threshold admits
    # 2 of 894 lymphocytes, so the cpu profile guards each class (ml.pseudo.filter_pseudo_labels).
    pseudo_min_class_fraction: float = 0.0
    # Judge the pool's pseudo-labels on predictions re-weighted to the pool's own class prior,
    # estimated by EM (ml.pseudo.pool_prior_shift): the class-balanced model over-calls a class that
    # is rare in the pool (issue 18: most of the eight-class run's `ig` pseudo-labels were other cells).
    # Opt-in: seed-paired on validation it changed nothing beyond noise (docs/results.md, Levers:
    # five classes -0.2 +/- 1.6 points over seeds 0-4, eight classes -0.3/+0.0/+0.3).
    pseudo_prior_shift: bool = False
    # FixMatch
    fixmatch_threshold: float = 0.95
    fixmatch_weight: float = 1.0
    # Augmentation: translation (fraction of the side) and flips; cells have no orientation,
    # so vertical flips and 90 degree rotations are on by default.
    translate: float = 0.125
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    # Stain robustness (ml.augment.StainAugment), on the training view: haematoxylin/eosin/DAB
    # densities scaled by U(1±alpha) and shifted by U(±beta) OD per image (Tellez et al. 2018);
    # brightness, contrast, saturation and channel gains of ±colour; grey images with grey_p;
    # a Gaussian blur up to blur_sigma px with blur_p; a zoom by a factor log-uniform in
    # [1/(1+zoom), 1+zoom]. All 0: off.
    stain_hed_alpha: float = 0.0
    stain_hed_beta: float = 0.0
    stain_colour: float = 0.0
    stain_grey_p: float = 0.0
    stain_blur_p: float = 0.0
    stain_blur_sigma: float = 1.0
    stain_zoom: float = 0.0
    # Each image's optical densities remixed by I + U(±stain_mix) (ml.augment.stain_mix): other dyes' colours.
    stain_mix: float = 0.0
    # The network's input normalisation (ml.model.ModelConfig.input_norm): "dataset" or "lab-instance".
    input_norm: str = "dataset"
    # Perturb the first stages' feature statistics in training with this probability a batch (ml.model.StyleNoise).
    style_noise: float = 0.0
    # Predict (pseudo-labels, evaluation, scoring) as the mean over the eight symmetries of
    # the square: eight times the inference cost, for steadier probabilities.
    tta: bool = False
    # Only the trained model predicts over the eight symmetries: its validation metrics, the test split and
    # the product's scoring of cells. Predictions during training (pseudo-labels, the OOD filter) stay one
    # view, so the training itself is that of tta_scoring=false, seed for seed.
    tta_scoring: bool = False
    seed: int = 0
    # bf16 autocast for training on CPUs with native bf16 (it is always on with CUDA; a CPU without
    # it trains in float32 whatever this says). The cpu profile turns it on, after the seed-paired
    # check of scripts/speed_check on the validation split ("Training speed" in docs/results.md).
    cpu_bf16: bool = False
    eval_every: int = 1  # epochs between validation passes, when validation data is given
    # "Unlike any known class" (ml.ood): the method ("auto": chosen on the validation cells by
    # leaving each known class out in turn), the share of known cells kept below the threshold,
    # and whether pseudo-labelling skips the pool's cells that score above it.
    ood_method: str = "auto"
    ood_target_tpr: float = 0.95
    ood_filter: bool = True
    # Where the pseudo-label filter's threshold (PSEUDO_OOD_TPR of the known cells kept) is set: "labelled", the
    # cells the model was trained on (they sit closer to their own class than new cells do), or "validation",
    # held-out known cells, like any cell of the pool (the labelled cells where a run has none).
    pseudo_ood_calibration: Literal["labelled", "validation"] = "labelled"
    # Describe each cell's stained nucleus (ml.morphology) beside the network's features, so the OOD
    # score also flags cells that are no white blood cell at all (ml.ood; ~1-2 ms a cell on a CPU core).
    ood_morphology: bool = True
    # Offer the OOD method choice the model's mid-level features too (ml.ood ``knn-layers``, the model's
    # ``ood_taps``). Off: on unknown cells kept for development it lost to ``mix`` (docs/results/ood/README.md).
    ood_layers: bool = False
    # At most this share of a queue batch goes to cells unlike any known class (most foreign
    # first). Uncapped, an early model's loose threshold flagged 1.4k-3.3k of 8.5k PBC cells and
    # filled every batch with them (docs/results/active/README.md), starving the known classes.
    queue_ood_share: float = 0.2
    # Fit the OOD score after training (a pass over every training cell). A reference model skips it: its
    # threshold, from its own lab's cells, is not used in another lab (cli/reference.py).
    fit_ood: bool = True
    # The OOD reference of the trained model: its true labels and up to this many cells in all,
    # the rest drawn from the accepted pseudo-labels (None: all of them). Class means and one
    # covariance need far fewer than the ~6,500 cells of a cpu run, each predicted 8 times (TTA).
    ood_reference_cells: int | None = 2000
    extra: dict = field(default_factory=dict)

    @property
    def stain_augment(self) -> dict:
        """The ``ml.augment.StainAugment`` fields of this config."""
        return {
            "hed_alpha": self.stain_hed_alpha,
            "hed_beta": self.stain_hed_beta,
            "colour": self.stain_colour,
            "grey_p": self.stain_grey_p,
            "blur_p": self.stain_blur_p,
            "blur_sigma": self.stain_blur_sigma,
            "zoom": self.stain_zoom,
            "mix": self.stain_mix,
        }

    @property
    def algorithm(self) -> str:
        return METHOD_SPECS[self.method][0]

    @property
    def later_algorithm(self) -> str:
        spec = METHOD_SPECS[self.method]
        return spec[3] if len(spec) > 3 else spec[0]

    @property
    def pretrains_student(self) -> bool:
        """Whether ``pretrain_epochs`` applies: only a mean teacher's round 1 is pre-trained."""
        return self.algorithm == "mean-teacher"

    @property
    def pseudo_filter(self) -> str | None:
        return METHOD_SPECS[self.method][1]

    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else METHOD_SPECS[self.method][2]


_PROFILE_DEFAULTS: dict[str, dict] = {
    # The paper: full width, 64 px, 180 epochs of the unlabelled pool; for a GPU.
    "paper": dict(
        width=1.0, image_size=64, epochs=180, round_epochs=180, steps_per_epoch=None, vflip=False, rot90=False
    ),
    # This 2-core machine: a half-width net and a fixed step budget, bf16 training where the CPU
    # has it natively, single-view predictions. Seed-paired against float32 with eight-view
    # predictions (scripts/speed_check, default method at 20 labels/class, seeds 0-2, two threads,
    # quarter width then): validation accuracy 92.9 against 93.3 % (per seed +1.2, -3.2, +0.8
    # points), 5.2 against 9.5 minutes (docs/results.md, "Training speed"). Half width since
    # 2026-12-06: at quarter width two seeds of five fell 5 points short on one AMX Xeon; at half
    # width, seeds 0-4 scored 95.2 ± 0.3 % on validation against 92.7 ± 2.6 % (per seed +4.8, +5.6,
    # -0.4, +0.0, +2.4 points), in 6.9 minutes against 2.9 there (docs/results.md, "Levers").
    # The same width with a quarter fewer supervised steps (5.8 minutes) lost more than half the
    # gain (93.9 against 95.3 % over seeds 0-3). Mixup in the supervised round since 2026-12-06 (sixth
    # session), seed for seed on an AMD EPYC: validation 95.1 -> 96.0 % (+0.8, +0.0, +2.0 points), test
    # 96.3 -> 97.2 % (docs/results.md, "Levers"). Its network is less sure of the pool's cells, and the
    # pseudo-label filter, its unlike-any-class threshold set on the trained-on labelled cells, kept about
    # 700 of 8,448 (5,100-6,300 without mixup). Set on the held-out validation cells since (seventh session,
    # seeds 0-2 on the same EPYC): 4,070-4,194 kept, 99.6-99.8 % right; validation 96.0 -> 96.1 % (+0.4,
    # +0.0, +0.0 points), test 97.2 -> 97.2 %. The trained model scored over the eight symmetries since (eighth
    # session, the same training seed for seed): validation 96.1 -> 96.8 % (+0.4, +0.4, +1.2 points), test
    # 97.2 -> 97.4 %, for 2.6-2.8 more minutes a run on the CPU and eight forward passes a scored cell.
    "cpu": dict(
        width=0.5,
        mixup=0.4,
        pseudo_ood_calibration="validation",
        tta_scoring=True,
        image_size=64,
        epochs=12,
        round_epochs=8,
        steps_per_epoch=100,
        pseudo_min_class_fraction=0.5,
        cpu_bf16=True,
        tta=False,
    ),
    # Tests: tiny net, 32 px, a few dozen steps.
    "tiny": dict(width=0.125, image_size=32, epochs=3, round_epochs=2, steps_per_epoch=15),
}

# Profile settings by the algorithm of a method's round 1.
_ROUND1_OVERRIDES: dict[str, dict[str, dict]] = {
    # Supervised training sees only 40 labelled images per step and no teacher forward pass,
    # so the same wall-clock budget buys it more steps.
    "supervised": {"cpu": dict(epochs=20)},
    # From scratch, a mean teacher's round 1 fits 20 labels a step too slowly for this budget:
    # it ended at 87-88 % (20 labels/class) where supervised training reached 95 %. On the CPU
    # its student is pre-trained on the labels first, then fine-tuned as a mean teacher.
    "mean-teacher": {"cpu": dict(pretrain_epochs=12, epochs=8)},
}


# The reference model's stain augmentation (cli/reference.py, with input_norm="lab-instance"); measured on the
# PBC validation split and zheng-dev in docs/results/transfer.md: PBC validation 95.2 -> 96.4 %, CellaVision blog
# 36.5 -> 48.1 %, Tecom 17.2 -> 55.0 % (6 epochs, the model alone; more with BatchNorm adaptation). The random
# zoom, on another machine, seeds 0/1 (BatchNorm adapted): PBC validation 96.0/95.6 -> 96.8/97.2 %, CellaVision
# blog 50.0/51.9 -> 57.7/53.8 %, Tecom 61.6/43.0 -> 63.6/59.6 % at 6 epochs; at 20 epochs 97.6/96.8 -> 98.0/97.2 %,
# 57.7/57.7 -> 71.2/59.6 %, 60.3/62.9 -> 60.3/57.6 % (docs/results/transfer/ablation-epyc/). The stains' colours
# remixed (stain_mix 0.2), seeds 0/1, 20 epochs, BatchNorm adapted: PBC validation 97.6/98.0 -> 97.6/97.6 %,
# CellaVision blog 67.3/61.5 -> 69.2/59.6 %, Tecom 60.3/48.3 -> 62.3/53.0 % (docs/results/transfer/ablation-dg/;
# feature-statistics noise, style_noise, lost on seed 0 and was left out).
STAIN_ROBUST: dict = dict(
    stain_hed_alpha=0.2,
    stain_hed_beta=0.05,
    stain_colour=0.3,
    stain_grey_p=0.1,
    stain_blur_p=0.3,
    stain_blur_sigma=1.0,
    stain_zoom=0.25,
    stain_mix=0.2,
)


def entropy_threshold_for(labels_per_class: int | None) -> float:
    """The paper's Table 4 schedule: filter harder when there are fewer labels."""
    if labels_per_class is None:
        return 0.01
    if labels_per_class <= 10:
        return 0.001
    if labels_per_class <= 20:
        return 0.005
    return 0.01


def make_config(profile: str, method: str = DEFAULT_METHOD, **overrides) -> TrainConfig:
    """Return the ``profile``'s config for ``method``, with ``overrides`` applied."""
    if profile not in _PROFILE_DEFAULTS:
        raise ValueError(f"unknown profile {profile!r}; choose from {PROFILES}")
    if method not in METHOD_SPECS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    values = dict(_PROFILE_DEFAULTS[profile])
    values.update(_ROUND1_OVERRIDES.get(METHOD_SPECS[method][0], {}).get(profile, {}))
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    values.update(overrides)
    return replace(TrainConfig(), method=method, profile=profile, **values)


def parse_overrides(pairs: list[str] | None) -> dict:
    """``key=value`` settings (a CLI's ``--set``) as TrainConfig field values, validated by
    pydantic against the field types: ``none``/``null`` for None, ``true``/``false`` for bools.
    Raises ValueError naming the setting that is wrong."""
    from pydantic import TypeAdapter, ValidationError

    known = {f.name for f in fields(TrainConfig)}
    raw: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value")
        if key not in known:
            raise ValueError(f"--set {pair!r}: unknown config field {key!r}")
        raw[key] = None if value.strip().lower() in ("none", "null") else value.strip()
    try:
        config = TypeAdapter(TrainConfig).validate_python(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in error.errors())
        raise ValueError(f"--set: {problems}") from None
    return {key: getattr(config, key) for key in raw}


def config_from_dict(values: dict | None) -> TrainConfig:
    """The TrainConfig a checkpoint stored (``asdict``); fields it lacks keep their defaults and
    fields this version no longer has are dropped."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in (values or {}).items() if k in known})
