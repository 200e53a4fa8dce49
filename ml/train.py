"""Training: one shared loop, one small class per algorithm, rounds of pseudo-labelling.

A run is a list of stages (``training_stages``), each a cosine cycle of the learning rate with
one algorithm: optionally a supervised pre-training of a mean teacher's student, then a stage per
round. Between rounds the teacher pseudo-labels the unlabelled pool (entropy filter, then label
propagation) and the accepted cells join the labelled pool of the next round, which either
fine-tunes the model (SGDR-style warm restart) or, with ``round_reinit``, trains a fresh one.
Data stay on the device as uint8; augmentation is batched; bf16 autocast where it is native.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ml.augment import Augmenter, StainAugment
from ml.checkpoint import make_checkpoint, model_config_of, shared_class_rows
from ml.config import TrainConfig
from ml.data import autocast
from ml.device import pick_device
from ml.infer import Predictions, predict
from ml.metrics import classification_metrics
from ml.model import ModelConfig, build_model
from ml.morphology import describe
from ml.ood import LAYERS_METHOD, OOD_METHODS, OODScorer, fit_ood
from ml.pseudo import PseudoLabels, filter_pseudo_labels
from ml.sampling import PoolSampler, UnlabelledSampler

PROGRESS_INTERVAL_S = 2.0
# Pseudo-labelling between rounds rejects pool cells scored above the 99th percentile of the
# labelled cells' own OOD scores (ml.ood).
PSEUDO_OOD_TPR = 0.99


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_accuracy: float | None = None
    funnel: dict | None = None
    phase: str = "train"
    round: int = 1
    rounds: int = 1
    unit: str = "step"  # what ``step`` of ``steps`` counts


class TrainingCancelled(Exception):
    """Raised inside ``train`` when ``should_stop()`` returns True."""


@dataclass
class TrainResult:
    checkpoint: dict
    metrics: dict | None
    history: list[dict]
    pseudo_labels: PseudoLabels | None = None  # the last round's, indexed like unlabelled_x
    wall_seconds: float = 0.0
    images_per_second: float = 0.0  # student images per second of training steps
    funnel: dict | None = None
    extra: dict = field(default_factory=dict)


# --- small pure helpers -------------------------------------------------------------------


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and the teacher's softmax; no gradient reaches the teacher."""
    return F.mse_loss(student_logits.float().softmax(dim=1), teacher_logits.detach().float().softmax(dim=1))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay·teacher + (1-decay)·student, over parameters and float buffers
    (BatchNorm running statistics); integer buffers (batch counters) are copied."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        if t_buf.dtype.is_floating_point:
            t_buf.lerp_(s_buf, 1.0 - decay)
        else:
            t_buf.copy_(s_buf)


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1.0 + math.cos(math.pi * min(1.0, progress)))


def sigmoid_rampup(fraction: float, length: float) -> float:
    """exp(-5(1-t)^2), the mean teacher paper's ramp-up; 1 after ``length``."""
    if length <= 0 or fraction >= length:
        return 1.0
    t = max(0.0, fraction) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


# --- algorithms: each overrides only train_step ---------------------------------------------


class Algorithm:
    name = ""  # the key in ALGORITHMS
    uses_unlabelled = True
    teacher_labels = True  # pseudo-label (and evaluate) with the teacher rather than the student

    def __init__(self, config: TrainConfig, student: nn.Module, teacher: nn.Module, augment: Augmenter):
        self.config = config
        self.student = student
        self.teacher = teacher
        self.augment = augment

    @property
    def eval_model(self) -> nn.Module:
        return self.teacher if self.teacher_labels else self.student

    def train_step(self, xl: torch.Tensor, yl: torch.Tensor, xu: torch.Tensor, ramp: float) -> tuple[torch.Tensor, int]:
        """Return the loss of one batch and the number of images the student saw."""
        raise NotImplementedError


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class Supervised(Algorithm):
    """Cross-entropy on labelled (and pseudo-labelled) cells only: the paper's models A/B."""

    name = "supervised"
    uses_unlabelled = False
    teacher_labels = False

    def train_step(self, xl, yl, xu, ramp):
        x = self.augment.weak(xl)
        if self.config.mixup <= 0 or len(xl) < 2:
            return F.cross_entropy(self.student(_cl(x)).float(), yl), len(xl)
        x, partner, weight = mixup(x, self.config.mixup)
        logits = self.student(_cl(x)).float()
        loss = weight * F.cross_entropy(logits, yl) + (1 - weight) * F.cross_entropy(logits, yl[partner])
        return loss, len(xl)


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``x`` blended with a shuffled copy of itself at a weight drawn from Beta(alpha, alpha), taken
    as the larger side (the batch stays closer to its own labels); returns the blend, the shuffle
    and the weight of ``x``."""
    weight = float(torch.distributions.Beta(alpha, alpha).sample())
    weight = max(weight, 1.0 - weight)
    partner = torch.randperm(len(x), device=x.device)
    return weight * x.float() + (1.0 - weight) * x[partner].float(), partner, weight


class MeanTeacher(Algorithm):
    """α·CE(labelled) + β·MSE(softmax student, softmax teacher) over the whole batch; the
    teacher sees its own augmentation of the same cells, under no_grad. With ``strong_student``
    (FixMatch's recipe inside the mean teacher) the student sees the unlabelled cells strongly
    augmented while the teacher keeps the weak view."""

    name = "mean-teacher"

    def train_step(self, xl, yl, xu, ramp):
        if self.config.consistency_mixup > 0 and len(xu) > 1:
            return self._interpolation_step(xl, yl, xu, ramp)
        x = torch.cat([xl, xu])
        if self.config.strong_student:
            student_view = torch.cat([self.augment.weak(xl), self.augment.strong(xu)])
        else:
            student_view = self.augment.weak(x)
        student_logits = self.student(_cl(student_view))
        with torch.no_grad():
            teacher_logits = self.teacher(_cl(self.augment.weak(x)))
        ce = F.cross_entropy(student_logits[: len(xl)].float(), yl)
        loss = ce + self.config.consistency_weight * ramp * consistency_loss(student_logits, teacher_logits)
        return loss, len(x)

    def _interpolation_step(self, xl, yl, xu, ramp):
        """CE on the labelled cells; the consistency term on the unlabelled cells mixed (ICT)."""
        with torch.no_grad():
            target = self.teacher(_cl(self.augment.weak(xu))).float().softmax(dim=1)
        mixed, partner, weight = mixup(self.augment.weak(xu), self.config.consistency_mixup)
        target = weight * target + (1.0 - weight) * target[partner]
        logits = self.student(_cl(torch.cat([self.augment.weak(xl), mixed])))
        ce = F.cross_entropy(logits[: len(xl)].float(), yl)
        consistency = F.mse_loss(logits[len(xl) :].float().softmax(dim=1), target)
        return ce + self.config.consistency_weight * ramp * consistency, len(xl) + len(xu)


class FixMatch(Algorithm):
    """CE(labelled, weak) + λ·CE(unlabelled strong, argmax of weak) where max prob ≥ τ."""

    name = "fixmatch"

    def train_step(self, xl, yl, xu, ramp):
        weak_l = self.augment.weak(xl)
        weak_u = self.augment.weak(xu)
        strong_u = self.augment.strong(xu)
        logits = self.student(_cl(torch.cat([weak_l, weak_u, strong_u]))).float()
        nl, nu = len(xl), len(xu)
        loss = F.cross_entropy(logits[:nl], yl)
        if nu:
            with torch.no_grad():
                probs = logits[nl : nl + nu].detach().softmax(dim=1)
                confidence, pseudo = probs.max(dim=1)
                mask = (confidence >= self.config.fixmatch_threshold).float()
            unsup = (F.cross_entropy(logits[nl + nu :], pseudo, reduction="none") * mask).mean()
            loss = loss + self.config.fixmatch_weight * unsup
        return loss, nl + 2 * nu


ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (Supervised, MeanTeacher, FixMatch)}


@dataclass(frozen=True)
class Stage:
    """One cosine cycle of the learning rate with one algorithm."""

    round: int
    algorithm: str
    epochs: int
    lr: float
    fresh: bool = False  # train new networks rather than go on with the previous stage's
    ramps_up: bool = True  # beta ramps up from 0 (the model has not been trained for consistency)
    pseudo_label_after: bool = False
    phase: str = "train"


def training_stages(config: TrainConfig, rounds: int) -> list[Stage]:
    """The stages of a run: an optional supervised pre-training of the mean teacher's student,
    round 1, then ``rounds - 1`` rounds after pseudo-labelling.

    Warm-started stages restart the cosine cycle (SGDR) from a lower peak: they fine-tune a
    trained model, and a full-height restart throws away much of what it learned. A
    re-initialised round trains from scratch at the full rate. Beta ramps up again whenever a
    stage's model starts afresh: a new network, or a switch of algorithm."""
    warm_lr = config.lr * config.round_lr_scale
    stages: list[Stage] = []
    pretrain = config.pretrain_epochs if config.pretrains_student else 0
    if pretrain:
        stages.append(Stage(1, "supervised", pretrain, config.lr, phase="pre-train"))
    stages.append(
        Stage(1, config.algorithm, config.epochs, warm_lr if pretrain else config.lr, pseudo_label_after=rounds > 1)
    )
    for index in range(2, rounds + 1):
        fresh = config.round_reinit
        stages.append(
            Stage(
                index,
                config.later_algorithm,
                config.round_epochs,
                config.lr if fresh else warm_lr,
                fresh=fresh,
                ramps_up=fresh or config.later_algorithm != stages[-1].algorithm,
                pseudo_label_after=index < rounds,
            )
        )
    return stages


# --- the loop ------------------------------------------------------------------------------


def _model_config(config: TrainConfig, n_classes: int, mean, std) -> ModelConfig:
    return ModelConfig(
        n_classes=n_classes,
        arch=config.arch,
        width=config.width,
        image_size=config.image_size,
        dropout=config.dropout,
        tta=config.tta,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        input_norm=config.input_norm,
        style_noise=config.style_noise,
    )


def fresh_model_config(config: TrainConfig, n_classes: int, *images: torch.Tensor) -> ModelConfig:
    """The network of ``config`` for ``n_classes``, its input normalised by the channel statistics of ``images``
    (the cells it trains on): what ``train`` builds when it does not warm-start, and what ``ml.selfsup`` pre-trains."""
    mean, std = _channel_stats(*images)
    return _model_config(config, n_classes, mean, std)


def _channel_stats(*tensors: torch.Tensor) -> tuple[list[float], list[float]]:
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x in tensors:
        for start in range(0, len(x), 1024):
            chunk = x[start : start + 1024].double()
            total += chunk.sum(dim=(0, 2, 3)).cpu()
            total_sq += (chunk**2).sum(dim=(0, 2, 3)).cpu()
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean**2).clamp(min=1e-6).sqrt()
    return mean.tolist(), std.tolist()


def _load_init(model: nn.Module, state: dict, old_names: list[str] | None, new_names: list[str] | None) -> None:
    """Warm-start ``model`` from ``state``. When the classes changed, the head is new: its rows
    for the classes the old model knew (by name) start from the old rows, the others fresh;
    the rest of the network is loaded as it was."""
    own = model.state_dict()
    head = {k for k in own if k.startswith("head.")}
    same_classes = old_names is not None and new_names is not None and list(old_names) == list(new_names)
    compatible = {
        k: v for k, v in state.items() if k in own and own[k].shape == v.shape and (same_classes or k not in head)
    }
    if not same_classes and old_names is not None and new_names is not None:
        rows = shared_class_rows(old_names, new_names)
        for key in head:
            if key in state and rows and state[key].shape[1:] == own[key].shape[1:]:
                merged = own[key].clone()
                for new, old in rows:
                    merged[new] = state[key][old]
                compatible[key] = merged
    model.load_state_dict(compatible, strict=False)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    preds = predict(model, x, tta=False).labels  # a learning curve: one view is enough
    return float((preds == y.cpu().numpy()).mean())


def _device(device: str | torch.device | None) -> torch.device:
    device = pick_device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # tiny weights late in training otherwise slow CPUs badly
    return device


def _steps_per_epoch(config: TrainConfig, use_unlabelled: bool, n_unlabelled: int, n_pool: int) -> int:
    """``config.steps_per_epoch``, else one pass over the unlabelled (or the labelled) pool."""
    if config.steps_per_epoch:
        return max(1, config.steps_per_epoch)
    if use_unlabelled:
        return max(1, math.ceil(n_unlabelled / max(1, config.batch_size - config.labelled_per_batch)))
    return max(1, math.ceil(n_pool / config.batch_size))


@dataclass(frozen=True)
class _Schedule:
    """A stage's learning rate (warm-up, then cosine) and consistency ramp by step."""

    stage: Stage
    steps_per_epoch: int
    warmup: int
    rampup: float

    def at(self, round_step: int) -> tuple[float, float]:
        total = self.stage.epochs * self.steps_per_epoch
        lr = cosine_lr(round_step, total, self.stage.lr, self.warmup)
        ramp = sigmoid_rampup(round_step / total, self.rampup) if self.stage.ramps_up else 1.0
        return lr, ramp


class _Run:
    """One call of ``train``: the networks, the pools and the counters its stages share."""

    def __init__(
        self,
        config: TrainConfig,
        model_config: ModelConfig,
        device: torch.device,
        data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        validation: tuple[torch.Tensor, torch.Tensor] | None,
        init_checkpoint: dict | None,
        progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
        class_names: list[str] | None = None,
    ) -> None:
        self.config, self.model_config, self.device = config, model_config, device
        self.class_names = class_names
        self.generator = torch.Generator().manual_seed(config.seed)
        self.student, self.teacher = self.fresh_models(init_checkpoint)
        self.augmenter = Augmenter(
            config.translate,
            config.hflip,
            config.vflip,
            config.rot90,
            config.seed,
            stain=StainAugment(**config.stain_augment),
        )
        self.xl_all, self.yl_all, self.xu_all = (t.to(device) for t in data)
        self.pool_x, self.pool_y = self.xl_all, self.yl_all  # labels, then accepted pseudo-labels
        self.validation = validation
        self.rounds = config.n_rounds if (config.pseudo_filter and len(self.xu_all)) else 1
        self.stages = training_stages(config, self.rounds)
        self.total_epochs = sum(stage.epochs for stage in self.stages)
        self.algorithm = ALGORITHMS[self.stages[0].algorithm](config, self.student, self.teacher, self.augmenter)
        self._progress, self._should_stop = progress, should_stop
        self.history: list[dict] = []
        self.funnel: dict | None = None
        self.pseudo: PseudoLabels | None = None
        self.images_seen, self.train_seconds, self.global_step, self.epoch_offset = 0, 0.0, 0, 0
        self.last_val: float | None = None
        self.last_loss = 0.0
        self._last_report = 0.0

    def fresh_models(self, init: dict | None) -> tuple[nn.Module, nn.Module]:
        student = build_model(self.model_config)
        old_names = init.get("class_names") if init is not None else None
        if init is not None:
            _load_init(student, init["student"], old_names, self.class_names)
        student = student.to(self.device).to(memory_format=torch.channels_last)
        teacher = copy.deepcopy(student)
        if init is not None:
            _load_init(teacher, init["teacher"], old_names, self.class_names)
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        return student, teacher

    def report(self, force: bool = False, **fields: object) -> None:
        """Call ``progress`` at most every PROGRESS_INTERVAL_S seconds (always when ``force``)."""
        now = time.perf_counter()
        if self._progress is not None and (force or now - self._last_report >= PROGRESS_INTERVAL_S):
            self._last_report = now
            values = {"epochs": self.total_epochs, "val_accuracy": self.last_val, "funnel": self.funnel}
            self._progress(Progress(**{**values, **fields}))

    def start_stage(self, stage: Stage) -> None:
        """New networks for a fresh stage; a new algorithm (its teacher a copy of the student)."""
        if stage.fresh:
            self.student, self.teacher = self.fresh_models(None)
            self.algorithm = ALGORITHMS[stage.algorithm](self.config, self.student, self.teacher, self.augmenter)
        elif stage.algorithm != self.algorithm.name:
            self.algorithm = ALGORITHMS[stage.algorithm](self.config, self.student, self.teacher, self.augmenter)
            self.teacher.load_state_dict(self.student.state_dict())

    def run_stage(self, stage: Stage) -> None:
        """One cosine cycle of ``stage.epochs`` epochs, then pseudo-labels if the stage asks."""
        config = self.config
        self.start_stage(stage)
        use_unlabelled = self.algorithm.uses_unlabelled and len(self.xu_all) > 0
        steps = _steps_per_epoch(config, use_unlabelled, len(self.xu_all), len(self.pool_x))
        n_lab = config.labelled_per_batch if use_unlabelled else config.batch_size
        n_unl = config.batch_size - config.labelled_per_batch if use_unlabelled else 0
        yl = self.yl_all
        labelled_sampler = PoolSampler(yl, self.pool_y[len(yl) :], config.true_label_share, self.generator)
        groups = None
        if config.balance_unlabelled and self.pseudo is not None:
            groups = torch.from_numpy(self.pseudo.label)
        unlabelled_sampler = UnlabelledSampler(len(self.xu_all), self.generator, groups)
        optimizer = torch.optim.SGD(
            self.student.parameters(),
            lr=stage.lr,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
        warmup = int(config.warmup_fraction * (stage.epochs * steps))
        schedule = _Schedule(stage, steps, warmup, config.consistency_rampup)
        phase = f"{stage.phase} (round {stage.round}/{self.rounds})"
        unlabelled = (lambda: unlabelled_sampler.draw(n_unl).to(self.device)) if n_unl else None
        self.student.train()
        for epoch in range(stage.epochs):
            label_idx = labelled_sampler.draw(steps, n_lab).to(self.device)
            self.run_epoch(stage, epoch, phase, optimizer, schedule, label_idx, n_lab, unlabelled)
        self.epoch_offset += stage.epochs
        if stage.pseudo_label_after:
            self.pseudo_label_pool(stage)

    def run_epoch(
        self,
        stage: Stage,
        epoch: int,
        phase: str,
        optimizer: torch.optim.Optimizer,
        schedule: _Schedule,
        label_idx: torch.Tensor,
        n_lab: int,
        unlabelled: Callable[[], torch.Tensor] | None,
    ) -> None:
        """One epoch of steps, then the validation accuracy (every ``eval_every`` epochs)."""
        config, steps = self.config, schedule.steps_per_epoch
        epoch_number = self.epoch_offset + epoch + 1
        losses = []
        epoch_started = time.perf_counter()
        for step in range(steps):
            if self._should_stop is not None and self._should_stop():
                raise TrainingCancelled()
            lr, ramp = schedule.at(epoch * steps + step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            li = label_idx[step * n_lab : (step + 1) * n_lab]
            xu = self.xu_all[unlabelled()] if unlabelled is not None else self.xu_all[:0]
            with autocast(self.device, config.cpu_bf16):
                loss, n_images = self.algorithm.train_step(self.pool_x[li], self.pool_y[li], xu, ramp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema_update(self.teacher, self.student, config.ema_decay)
            self.global_step += 1
            self.images_seen += n_images
            losses.append(loss.detach())
            if step % 10 == 0:
                self.report(
                    epoch=epoch_number,
                    step=step + 1,
                    steps=steps,
                    loss=float(loss.detach()),
                    phase=phase,
                    round=stage.round,
                    rounds=self.rounds,
                )
        self.train_seconds += time.perf_counter() - epoch_started
        self.last_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        if self.validation is not None and ((epoch + 1) % max(1, config.eval_every) == 0 or epoch + 1 == stage.epochs):
            self.last_val = _accuracy(self.algorithm.eval_model, *self.validation)
            self.student.train()
        self.history.append(
            {
                "epoch": epoch_number,
                "round": stage.round,
                "algorithm": stage.algorithm,
                "loss": self.last_loss,
                "val_accuracy": self.last_val,
            }
        )
        self.report(
            force=True,
            epoch=epoch_number,
            step=steps,
            steps=steps,
            loss=self.last_loss,
            phase=phase,
            round=stage.round,
            rounds=self.rounds,
        )

    def pseudo_label_pool(self, stage: Stage) -> None:
        """The eval model pseudo-labels the unlabelled pool; the accepted cells join the labels."""
        self.report(
            force=True,
            epoch=self.epoch_offset,
            step=0,
            steps=0,
            loss=self.last_loss,
            phase="pseudo-label",
            round=stage.round,
            rounds=self.rounds,
        )
        self.pseudo = pseudo_label(
            self.algorithm.eval_model, self.config, self.xl_all, self.yl_all, self.xu_all, self.validation
        )
        self.funnel = self.pseudo.funnel
        accepted = torch.from_numpy(self.pseudo.accepted).to(self.device)
        self.pool_x = torch.cat([self.xl_all, self.xu_all[accepted]])
        self.pool_y = torch.cat([self.yl_all, torch.from_numpy(self.pseudo.label).to(self.device)[accepted]])
        self.student.train()

    def final_metrics(self, class_names: list[str]) -> tuple[dict | None, Predictions | None]:
        """Validation metrics of the eval model (with the last funnel), if there is validation data, and its
        predictions of the validation cells (with the mid-level features the OOD method needs), which the OOD
        score's calibration takes as they are instead of predicting the same cells again."""
        metrics, predictions = None, None
        if self.validation is not None:
            loss = self.history[-1]["loss"] if self.history else 0.0
            self.report(force=True, epoch=self.epoch_offset, step=0, steps=0, loss=loss, phase="evaluate")
            val_x, val_y = self.validation
            layers = self.config.fit_ood and ood_needs_layers(self.config, self.config.ood_method)
            predictions = predict(self.algorithm.eval_model, val_x, layers=layers)
            metrics = classification_metrics(val_y.cpu().numpy(), predictions.labels, class_names)
        if metrics is not None or self.funnel is not None:
            metrics = dict(metrics or {})
            metrics["funnel"] = self.funnel
        return metrics, predictions


def train(
    config: TrainConfig,
    labelled_x: torch.Tensor,
    labelled_y: torch.Tensor,
    unlabelled_x: torch.Tensor | None,
    class_names: list[str],
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    init_checkpoint: dict | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``config.method`` on uint8 images; see the module docstring."""
    started = time.perf_counter()
    device = _device(device)
    torch.manual_seed(config.seed)
    if unlabelled_x is None:
        unlabelled_x = labelled_x[:0]
    if init_checkpoint is not None:
        model_config = model_config_of(init_checkpoint)
        model_config.n_classes = len(class_names)
    else:
        model_config = fresh_model_config(config, len(class_names), labelled_x, unlabelled_x)
    model_config.tta = config.tta  # predictions in training follow this run's config, whatever a warm start had
    validation = (val_x, val_y) if val_x is not None and val_y is not None and len(val_x) else None
    run = _Run(
        config,
        model_config,
        device,
        (labelled_x, labelled_y.long(), unlabelled_x),
        validation,
        init_checkpoint,
        progress,
        should_stop,
        class_names=list(class_names),
    )
    for stage in run.stages:
        run.run_stage(stage)
    if config.tta_scoring:  # from here on, the trained model predicts as it will be served
        for net_config in (model_config, run.student.config, run.teacher.config):  # the teacher's is a copy
            net_config.tta = True
    metrics, val_predictions = run.final_metrics(class_names)
    run.student.eval()
    ood = None
    if config.fit_ood:
        ref_x, ref_y = ood_reference(run.pool_x, run.pool_y, len(labelled_y), config.seed, config.ood_reference_cells)
        ood = fit_ood_for(run.algorithm.eval_model, config, ref_x, ref_y, validation, len(class_names), val_predictions)
    if ood is not None:
        metrics = dict(metrics or {})
        metrics["ood"] = ood.summary()
    checkpoint = make_checkpoint(
        student=run.student,
        teacher=run.teacher if run.algorithm.teacher_labels else run.student,
        model_config=model_config,
        train_config=config,
        class_names=class_names,
        metrics=metrics,
        history=run.history,
        step=run.global_step,
    )
    if ood is not None:
        checkpoint["ood"] = ood.state()
    return TrainResult(
        checkpoint=checkpoint,
        metrics=metrics,
        history=run.history,
        pseudo_labels=run.pseudo,
        wall_seconds=time.perf_counter() - started,
        images_per_second=run.images_seen / run.train_seconds if run.train_seconds else 0.0,
        funnel=run.funnel,
    )


def pseudo_label(
    model: nn.Module,
    config: TrainConfig,
    labelled_x: torch.Tensor,
    labelled_y: torch.Tensor,
    unlabelled_x: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PseudoLabels:
    """Predict the unlabelled pool and filter: entropy (set 1), then propagation (set 2). With
    ``config.ood_filter``, cells unlike any labelled class never pass (``ml.ood``); its threshold
    is set on the cells ``config.pseudo_ood_calibration`` names (``validation``: known cells)."""
    unl = predict(model, unlabelled_x)
    use_lp = config.pseudo_filter == "lp"
    lab = predict(model, labelled_x) if (use_lp or config.ood_filter) else None
    unlike = None
    if config.ood_filter and lab is not None and len(labelled_x) > 1:
        y = labelled_y.cpu().numpy()
        n_classes = int(y.max()) + 1
        calibration, calibration_y, calibrated_on = lab, y, "labelled"
        if config.pseudo_ood_calibration == "validation" and validation is not None and len(validation[1]) > 1:
            # held-out known cells score as the pool's known cells do; the labelled cells, trained on,
            # score lower, so a threshold set on them flags a share of the pool's known cells as well
            calibration = predict(model, validation[0])
            calibration_y, calibrated_on = validation[1].cpu().numpy(), "validation"
            n_classes = max(n_classes, int(calibration_y.max()) + 1)
        # the share kept is set high either way: this only removes the clearly foreign
        scorer = fit_ood(
            lab.features,
            y,
            calibration.logits,
            calibration.features,
            calibration_y,
            n_classes,
            # the network alone here: a morphology method is for the trained model's score (fit_ood_for)
            method=config.ood_method if config.ood_method in OOD_METHODS else "mahalanobis",
            target_tpr=PSEUDO_OOD_TPR,
            calibrated_on=calibrated_on,
        )
        unlike = scorer.is_unlike(scorer.score(unl.logits, unl.features))
    return filter_pseudo_labels(
        unl.probs,
        unl.features,
        lab.features if lab is not None else None,
        labelled_y.cpu().numpy() if use_lp else None,
        entropy_threshold=config.entropy_threshold,
        use_propagation=use_lp,
        n_neighbors=config.lp_neighbors,
        confidence_threshold=config.lp_confidence,
        alpha=config.lp_alpha,
        min_class_fraction=config.pseudo_min_class_fraction,
        unlike=unlike,
        prior_shift=config.pseudo_prior_shift,
    )


def ood_reference(
    pool_x: torch.Tensor, pool_y: torch.Tensor, n_true: int, seed: int, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_true`` cells of the pool (the true labels) and, up to ``cap`` cells in all
    (None: no cap), a seeded random draw of the rest (the accepted pseudo-labels)."""
    if cap is None or len(pool_x) <= max(cap, n_true):
        return pool_x, pool_y
    extra = torch.randperm(len(pool_x) - n_true, generator=torch.Generator().manual_seed(seed))
    keep = torch.cat([torch.arange(n_true), n_true + extra[: max(0, cap - n_true)].sort().values])
    keep = keep.to(pool_x.device)
    return pool_x[keep], pool_y[keep]


def ood_needs_layers(config: TrainConfig, method: str) -> bool:
    """Whether fitting OOD ``method`` takes the model's mid-level features: where the config offers them
    (``ood_layers``) or the method is the one that needs them."""
    return config.ood_layers or method == LAYERS_METHOD


def fit_ood_for(
    model: nn.Module,
    config: TrainConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor] | None,
    n_classes: int,
    val_predictions: Predictions | None = None,
) -> OODScorer | None:
    """The OOD score of a trained model: reference from its training cells (labels and accepted
    pseudo-labels), method and threshold from the validation cells (else the training cells);
    with ``config.ood_morphology``, the cells' morphology descriptors too (``ml.morphology``); with
    ``config.ood_layers`` (or the method named needs them), the model's mid-level features too.
    ``val_predictions``: the model's predictions of the validation cells where the caller has them."""
    if len(train_x) < 2:
        return None
    layers = ood_needs_layers(config, config.ood_method)
    train = predict(model, train_x, layers=layers)
    train_d = val_d = describe(train_x) if config.ood_morphology else None
    if validation is not None:
        val = val_predictions if val_predictions is not None else predict(model, validation[0], layers=layers)
        val_y, calibrated_on = validation[1].cpu().numpy(), "validation"
        val_d = describe(validation[0]) if config.ood_morphology else None
    else:
        val, val_y, calibrated_on = train, train_y.cpu().numpy(), "training cells (no validation split)"
    return fit_ood(
        train.features,
        train_y.cpu().numpy(),
        val.logits,
        val.features,
        val_y,
        n_classes,
        method=config.ood_method,
        target_tpr=config.ood_target_tpr,
        calibrated_on=calibrated_on,
        train_descriptors=train_d,
        val_descriptors=val_d,
        descriptor_size=int(train_x.shape[-1]),
        train_layers=train.layers,
        val_layers=val.layers,
    )
