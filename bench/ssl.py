"""``leukolab bench ssl``: train a method with N labels per class from a MANIFEST's train split
and evaluate it on the test split; the JSON it writes is what docs/results/*.json hold.

The fixed validation split (``ml.splits``: 50 cells per class carved from the train split) is
the training's validation data: its learning curve, the out-of-distribution calibration and
``val_accuracy``, on which every choice is made. Its cells are never labelled nor unlabelled.
The test split is predicted once, after training, for ``accuracy``.

torch is imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from ml.config import DEFAULT_METHOD, METHODS, PROFILES, TrainConfig

if TYPE_CHECKING:
    from ml.data import ImageSet
    from ml.pseudo import PseudoLabels
    from ml.train import Progress, TrainResult

PAPER_TABLE5_ORDER = ("neutrophil", "monocyte", "basophil", "eosinophil", "lymphocyte")


@dataclass
class Split:
    """The benchmark's data: the train split's rows by role, the validation and the test set."""

    train_set: ImageSet  # the manifest's train split less the validation cells
    validation: ImageSet  # the fixed validation split (ml.splits); every choice is made on it
    test_set: ImageSet
    labelled: np.ndarray
    unlabelled: np.ndarray


def print_table5(rows: list[tuple[str, dict]]) -> None:
    """Print metrics shaped like the paper's Table 5: per class prec/rec/F1, then accuracy."""
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    names = list(rows[0][1]["per_class"])
    ordered = [n for n in PAPER_TABLE5_ORDER if n in names] + [n for n in names if n not in PAPER_TABLE5_ORDER]
    table = Table(title="Comparison (shaped like Song & Wang 2024, Table 5)")
    table.add_column("Model")
    for name in ordered:
        for metric in ("prec", "rec", "F1"):
            table.add_column(f"{name[:4]} {metric}", justify="right")
    table.add_column("acc %", justify="right")
    table.add_column("macro F1", justify="right")
    for label, metrics in rows:
        cells = []
        for name in ordered:
            pc = metrics["per_class"][name]
            cells += [f"{pc['precision']:.2f}", f"{pc['recall']:.2f}", f"{pc['f1']:.2f}"]
        table.add_row(label, *cells, f"{100 * metrics['accuracy']:.1f}", f"{metrics['macro_f1']:.3f}")
    Console().print(table)


def bench_config(
    profile: str, method: str, seed: int, per_class: int | None, overrides: list[str] | None
) -> TrainConfig:
    """The profile's config with ``--set`` overrides; the entropy threshold follows the labels."""
    from ml.config import entropy_threshold_for, make_config, parse_overrides

    try:
        extra = parse_overrides(overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    extra.setdefault("entropy_threshold", entropy_threshold_for(per_class))
    extra.setdefault("eval_every", 4)
    return make_config(profile, method, seed=seed, **extra)


EXTRA_SPLIT_SEED = 20260501  # fixed: every run and seed tests on the same extra-class cells
EXTRA_TEST_PER_CLASS = 100
# Validation cells of each extra class, so that choices about them (issue 18's 8-class runs) are
# made on validation like the manifest's classes' (25 of the ~200 left per class of pbc-other).
EXTRA_VALIDATION_PER_CLASS = 25
EXTRA_ROLES = ("test", "validation", "train")


def extra_class_rows(extra: Path, names: list[str]) -> dict[str, tuple[list[str], list[int]]]:
    """The extra classes' files split by a fixed seed into roles: ``EXTRA_TEST_PER_CLASS`` per class
    for the test set, then ``EXTRA_VALIDATION_PER_CLASS`` for validation, the rest for the train
    split. Returns {role: (files, y)}, y indexing ``names``."""
    from ml.data import read_manifest

    rows = read_manifest(extra)
    index = {name: i for i, name in enumerate(names)}
    rng = np.random.default_rng(EXTRA_SPLIT_SEED)
    roles: dict[str, tuple[list[str], list[int]]] = {role: ([], []) for role in EXTRA_ROLES}
    for label in sorted({r["label"] for r in rows}):
        files = sorted(r["file"] for r in rows if r["label"] == label)
        for rank, i in enumerate(rng.permutation(len(files))):
            if rank < EXTRA_TEST_PER_CLASS:
                role = "test"
            elif rank < EXTRA_TEST_PER_CLASS + EXTRA_VALIDATION_PER_CLASS:
                role = "validation"
            else:
                role = "train"
            roles[role][0].append(files[i])
            roles[role][1].append(index[label])
    return roles


def names_with_extra(data: Path, extra: Path | None) -> list[str] | None:
    """The classes of ``data``'s manifest and ``extra``'s, sorted by name; None without ``extra`` (the
    ImageFolder's own order)."""
    from ml.data import read_manifest

    if extra is None:
        return None
    return sorted({r["label"] for r in read_manifest(data)} | {r["label"] for r in read_manifest(extra)})


def with_extra(base: ImageSet, extra: Path, files: list[str], y: list[int], size: int) -> ImageSet:
    """``base`` with ``extra``'s ``files`` (labels ``y``) appended, at ``size`` px."""
    import torch

    from ml.data import ImageSet, load_images

    x = load_images([extra / f for f in files], size)
    return ImageSet(
        torch.cat([base.x, x]),
        torch.cat([base.y, torch.tensor(y, dtype=torch.long)]),
        base.class_names,
        base.files + [str(extra / f) for f in files],
    )


def load_split(
    data: Path,
    test_dir: Path | None,
    config: TrainConfig,
    per_class: int | None,
    seed: int,
    extra_classes: Path | None = None,
) -> Split:
    """Draw ``per_class`` labels per class from the train split less the validation cells (by
    ``seed``); the rest is the unlabelled pool when the method uses one. ``extra_classes`` (a
    MANIFEST folder of other classes) adds its classes: ``extra_class_rows`` splits them into test,
    validation and train cells."""
    from ml.data import load_image_folder, load_manifest_split, split_labelled
    from ml.splits import VALIDATION

    train_set = load_manifest_split(data, "train", config.image_size, class_names=names_with_extra(data, extra_classes))
    validation = load_manifest_split(data, VALIDATION, config.image_size, class_names=train_set.class_names)
    if test_dir is not None:
        test_set = load_image_folder(test_dir, config.image_size, class_names=train_set.class_names)
    else:
        test_set = load_manifest_split(data, "test", config.image_size, class_names=train_set.class_names)
    if extra_classes is not None:
        rows = extra_class_rows(extra_classes, train_set.class_names)
        train_set = with_extra(train_set, extra_classes, *rows["train"], config.image_size)
        validation = with_extra(validation, extra_classes, *rows["validation"], config.image_size)
        if test_dir is None:
            test_set = with_extra(test_set, extra_classes, *rows["test"], config.image_size)
    labelled, rest = split_labelled(train_set.y, per_class, seed)
    uses_unlabelled = config.algorithm != "supervised" or config.pseudo_filter is not None
    return Split(train_set, validation, test_set, labelled, rest if uses_unlabelled else rest[:0])


def train_with_progress(
    config: TrainConfig, split: Split, title: str, started: float, init_checkpoint: dict | None = None
) -> TrainResult:
    """Train with a progress bar (a line per epoch where stderr is not a terminal). The learning
    curve is read on the validation split; the test split is not passed to training at all."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    from ml.train import train

    x, y = split.train_set.x, split.train_set.y
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with RichProgress(*columns) as bar:
        task = bar.add_task(title, total=None, info="")
        last_epoch = {"n": -1}

        def on_progress(p: Progress) -> None:
            info = f"{p.phase} epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps} loss {p.loss:.3f}"
            if p.val_accuracy is not None:
                info += f" val acc {p.val_accuracy:.3f}"
            if p.funnel:
                info += f" funnel {p.funnel}"
            bar.update(task, total=p.epochs, completed=p.epoch - 1 + (p.step / p.steps if p.steps else 1), info=info)
            if not bar.console.is_terminal and (p.epoch != last_epoch["n"] or p.phase != "train"):
                last_epoch["n"] = p.epoch
                typer.echo(f"[{time.perf_counter() - started:6.0f} s] {info}", err=True)

        return train(
            config,
            x[split.labelled],
            y[split.labelled],
            x[split.unlabelled],
            split.train_set.class_names,
            val_x=split.validation.x,
            val_y=split.validation.y,
            init_checkpoint=init_checkpoint,
            progress=on_progress,
        )


def pseudo_label_report(pl: PseudoLabels, truth: np.ndarray, class_names: list[str]) -> dict:
    """How many unlabelled cells each filter kept, and how many of them were right, per class."""

    def accuracy_of(mask: np.ndarray) -> float | None:
        return float((pl.label[mask] == truth[mask]).mean()) if mask.any() else None

    accepted = np.zeros(len(truth), dtype=bool)
    accepted[pl.accepted] = True
    funnel_by_class = {}
    for c, name in enumerate(class_names):
        of_class = truth == c
        funnel_by_class[name] = {
            "unlabelled": int(of_class.sum()),
            "set1": int((of_class & (pl.outcome != "rejected")).sum()),
            "accepted": int((of_class & accepted).sum()),
            "accepted_as_class": int((accepted & (pl.label == c)).sum()),
            "precision": accuracy_of(accepted & (pl.label == c)),
        }
    return {
        "funnel": pl.funnel,
        "set1_accuracy": accuracy_of(pl.outcome != "rejected"),
        "set2_accuracy": accuracy_of(pl.outcome == "passed_propagation") if pl.funnel.get("set2") is not None else None,
        "accepted": int(accepted.sum()),
        "accepted_accuracy": accuracy_of(accepted),
        "coverage": float(accepted.mean()) if len(accepted) else 0.0,
        "per_class": funnel_by_class,
    }


def validation_metrics(result: TrainResult, config: TrainConfig, split: Split) -> dict:
    """The checkpoint on the validation split: the training's own final metrics (the model that
    pseudo-labels and predicts, with TTA where configured) and, with TTA, the single-view accuracy
    of the same checkpoint (a paired measure of what TTA adds)."""
    from ml.infer import predict
    from ml.metrics import classification_metrics

    val_x, val_y = split.validation.x, split.validation.y.numpy()
    metrics = result.metrics or {}
    if "accuracy" not in metrics and len(val_y):  # the training had no validation metrics
        metrics = classification_metrics(val_y, predict(result.checkpoint, val_x).labels, split.train_set.class_names)
    single_view = None
    if (config.tta or config.tta_scoring) and len(val_y):
        single_view = float((predict(result.checkpoint, val_x, tta=False).labels == val_y).mean())
    return {
        "val_accuracy": metrics.get("accuracy"),
        "val_macro_f1": metrics.get("macro_f1"),
        "val_per_class": metrics.get("per_class"),
        "val_single_view_accuracy": single_view,
    }


def evaluate_test(result: TrainResult, split: Split) -> dict:
    """The test split's metrics: its one prediction of the run, after every choice is made."""
    from ml.infer import predict
    from ml.metrics import classification_metrics

    predictions = predict(result.checkpoint, split.test_set.x)
    return classification_metrics(split.test_set.y.numpy(), predictions.labels, split.train_set.class_names)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def ssl(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder with MANIFEST.csv (train/test split)")],
    labels_per_class: Annotated[str, typer.Option("--labels-per-class", help="labelled images per class, or 'all'")],
    method: Annotated[str, typer.Option("--method", help=f"one of {', '.join(METHODS)}")] = DEFAULT_METHOD,
    profile: Annotated[str, typer.Option("--profile", help=f"one of {', '.join(PROFILES)}")] = "cpu",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    test_dir: Annotated[
        Path | None, typer.Option("--test-dir", help="evaluate on this ImageFolder instead of the test split")
    ] = None,
    checkpoint_out: Annotated[Path | None, typer.Option("--checkpoint", help="also save the checkpoint")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="config override key=value")] = None,
    extra_classes: Annotated[
        Path | None,
        typer.Option(
            "--extra-classes",
            help="a MANIFEST folder of more classes (e.g. pbc-other): by a fixed seed 100 per class to "
            "the test set, 25 to the validation split, the rest to the train split",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch.set_num_threads (default: torch's own)")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="start from this checkpoint (e.g. bench pretrain's), not from random weights"),
    ] = None,
) -> dict:
    """Train METHOD with N labels per class from the train split less the validation split;
    report validation metrics, and evaluate once on the test split."""
    import torch

    from ml.data import train_precision
    from ml.device import device_name, pick_device

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    per_class = None if labels_per_class.strip().lower() == "all" else int(labels_per_class)
    config = bench_config(profile, method, seed, per_class, overrides)
    init_checkpoint = None
    if init is not None:
        from ml.checkpoint import load_checkpoint

        init_checkpoint = load_checkpoint(init)
        net = init_checkpoint["model_config"]
        theirs = (net.get("arch"), net.get("width"), net.get("image_size"))
        ours = (config.arch, config.width, config.image_size)
        if theirs != ours:
            raise typer.BadParameter(
                f"--init {init}: its network (arch, width, px) is {theirs}, the profile's {ours}; "
                "pre-train with this profile"
            )
    device = pick_device()
    split = load_split(data, test_dir, config, per_class, seed, extra_classes)
    load_seconds = time.perf_counter() - started
    result = train_with_progress(config, split, f"{method} @{labels_per_class}", started, init_checkpoint)
    train_seconds = time.perf_counter() - started - load_seconds
    validation = validation_metrics(result, config, split)
    metrics = evaluate_test(result, split)
    pseudo = None
    if result.pseudo_labels is not None:
        truth = split.train_set.y[split.unlabelled].numpy()
        pseudo = pseudo_label_report(result.pseudo_labels, truth, split.train_set.class_names)
    if checkpoint_out is not None:
        from ml.checkpoint import save_checkpoint

        save_checkpoint(checkpoint_out, result.checkpoint)
    out = {
        "dataset": str(data),
        "extra_classes": str(extra_classes) if extra_classes is not None else None,
        "method": method,
        "profile": profile,
        "seed": seed,
        "labels_per_class": per_class if per_class is not None else "all",
        "n_labelled": int(len(split.labelled)),
        "n_unlabelled": int(len(split.unlabelled)),
        "n_validation": int(len(split.validation.y)),
        "n_test": int(len(split.test_set.y)),
        "test": str(test_dir) if test_dir is not None else "manifest test split",
        **validation,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
        "confusion": metrics["confusion"],
        "class_names": split.train_set.class_names,
        "pseudo_labels": pseudo,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "load_seconds": load_seconds,
        "images_per_second": result.images_per_second,
        "ood": (result.metrics or {}).get("ood"),
        "device": device_name(device),
        "train_precision": train_precision(device, config.cpu_bf16),
        "threads": torch.get_num_threads(),
        "init": str(init) if init is not None else None,
        "torch": torch.__version__,
        "config": asdict(config),
        "history": result.history,
    }
    _summarise(out, f"{method} @{labels_per_class}/class", metrics)
    if json_out is not None:
        write_json(json_out, out)
    return out


def _summarise(out: dict, label: str, metrics: dict) -> None:
    print_table5([(label, metrics)])
    val = out["val_accuracy"]
    summary = f"val accuracy {100 * val:.2f} %  val macro-F1 {out['val_macro_f1']:.4f}  " if val is not None else ""
    summary += (
        f"test accuracy {100 * out['accuracy']:.2f} %  macro-F1 {out['macro_f1']:.4f}  wall {out['wall_seconds']:.0f} s"
    )
    pseudo = out["pseudo_labels"]
    if pseudo:
        summary += f"  pseudo-labels {pseudo['funnel']} accepted accuracy {pseudo['accepted_accuracy']}"
    typer.echo(summary)
