"""Benchmark commands: ``leukolab bench ssl`` and ``leukolab bench throughput``.

Plain functions with typer-annotated parameters (the leukolab CLI registers them); torch is
imported inside them so that importing this module stays cheap. ``python -m ml.cli`` runs
them without the rest of leukolab.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Annotated

import typer

from ml.config import DEFAULT_METHOD, METHODS, PROFILES

PAPER_TABLE5_ORDER = ("neutrophil", "monocyte", "basophil", "eosinophil", "lymphocyte")
# The vector unit a CPU device string names in brackets (with native bf16, without): two CPUs
# with one model name can differ 4x per step. scripts/make_results.py reads it back.
CPU_VECTOR_UNITS = ("AVX-512 BF16", "no native bf16")


def _parse_overrides(pairs: list[str] | None) -> dict:
    from dataclasses import fields

    from ml.config import TrainConfig

    types = {f.name: f.type for f in fields(TrainConfig)}
    out: dict = {}
    for pair in pairs or []:
        key, _, raw = pair.partition("=")
        if key not in types:
            raise typer.BadParameter(f"unknown config field {key!r}")
        kind = str(types[key])
        if "bool" in kind:
            out[key] = raw.lower() in ("1", "true", "yes")
        elif "int" in kind and "None" in kind and raw.lower() == "none":
            out[key] = None
        elif kind.startswith("int"):
            out[key] = int(raw)
        elif kind.startswith("float"):
            out[key] = float(raw)
        elif "int" in kind:
            out[key] = int(raw)
        else:
            out[key] = raw
    return out


def _cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type: timings differ several-fold by CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    from ml.data import cpu_has_bf16

    unit = CPU_VECTOR_UNITS[0] if cpu_has_bf16() else CPU_VECTOR_UNITS[1]
    return f"cpu: {_cpu_model()} ({unit}), {torch.get_num_threads()} threads"


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
) -> dict:
    """Train METHOD with N labels per class from the train split; evaluate on the test split."""
    import numpy as np
    import torch
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    from ml.config import entropy_threshold_for, make_config
    from ml.data import default_device, load_image_folder, load_manifest_split, split_labelled
    from ml.infer import predict
    from ml.metrics import classification_metrics
    from ml.train import Progress, train

    started = time.perf_counter()
    per_class = None if labels_per_class.strip().lower() == "all" else int(labels_per_class)
    extra = _parse_overrides(overrides)
    extra.setdefault("entropy_threshold", entropy_threshold_for(per_class))
    extra.setdefault("eval_every", 4)
    config = make_config(profile, method, seed=seed, **extra)
    device = default_device()

    train_set = load_manifest_split(data, "train", config.image_size)
    if test_dir is not None:
        test_set = load_image_folder(test_dir, config.image_size, class_names=train_set.class_names)
    else:
        test_set = load_manifest_split(data, "test", config.image_size, class_names=train_set.class_names)
    labelled, rest = split_labelled(train_set.y, per_class, seed)
    uses_unlabelled = config.algorithm != "supervised" or config.pseudo_filter is not None
    unlabelled = rest if uses_unlabelled else rest[:0]
    load_seconds = time.perf_counter() - started

    with RichProgress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task(f"{method} @{labels_per_class}", total=None, info="")

        last_epoch = {"n": -1}

        def on_progress(p: Progress) -> None:
            info = f"{p.phase} epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps} loss {p.loss:.3f}"
            if p.val_accuracy is not None:
                info += f" monitor acc {p.val_accuracy:.3f}"
            if p.funnel:
                info += f" funnel {p.funnel}"
            bar.update(task, total=p.epochs, completed=p.epoch - 1 + (p.step / p.steps if p.steps else 1), info=info)
            if not bar.console.is_terminal and (p.epoch != last_epoch["n"] or p.phase != "train"):
                last_epoch["n"] = p.epoch
                elapsed = time.perf_counter() - started
                typer.echo(f"[{elapsed:6.0f} s] {info}", err=True)

        # The learning curve is read on 500 unlabelled train cells (their labels never reach
        # training); the test split is touched only once, after training.
        monitor = np.random.default_rng(seed).permutation(rest)[:500]
        result = train(
            config,
            train_set.x[labelled],
            train_set.y[labelled],
            train_set.x[unlabelled],
            train_set.class_names,
            val_x=train_set.x[monitor],
            val_y=train_set.y[monitor],
            progress=on_progress,
        )
    train_seconds = time.perf_counter() - started - load_seconds
    predictions = predict(result.checkpoint, test_set.x)
    from ml.checkpoint import load_model

    student_monitor = None
    if len(monitor):
        student_preds = predict(load_model(result.checkpoint, which="student"), train_set.x[monitor]).labels
        student_monitor = float((student_preds == train_set.y[monitor].numpy()).mean())
    metrics = classification_metrics(test_set.y.numpy(), predictions.labels, train_set.class_names)
    # With TTA, the same checkpoint's single-view accuracy: a paired measure of what TTA adds.
    single_view = None
    if config.tta:
        single_view = float((predict(result.checkpoint, test_set.x, tta=False).labels == test_set.y.numpy()).mean())

    pseudo = None
    if result.pseudo_labels is not None:
        pl = result.pseudo_labels
        truth = train_set.y[unlabelled].numpy()

        def accuracy_of(mask: np.ndarray) -> float | None:
            return float((pl.label[mask] == truth[mask]).mean()) if mask.any() else None

        accepted = np.zeros(len(truth), dtype=bool)
        accepted[pl.accepted] = True
        funnel_by_class = {}
        for c, name in enumerate(train_set.class_names):
            of_class = truth == c
            funnel_by_class[name] = {
                "unlabelled": int(of_class.sum()),
                "set1": int((of_class & (pl.outcome != "rejected")).sum()),
                "accepted": int((of_class & accepted).sum()),
                "accepted_as_class": int((accepted & (pl.label == c)).sum()),
                "precision": accuracy_of(accepted & (pl.label == c)),
            }
        pseudo = {
            "funnel": pl.funnel,
            "set1_accuracy": accuracy_of(pl.outcome != "rejected"),
            "set2_accuracy": accuracy_of(pl.outcome == "passed_propagation")
            if pl.funnel.get("set2") is not None
            else None,
            "accepted": int(accepted.sum()),
            "accepted_accuracy": accuracy_of(accepted),
            "coverage": float(accepted.mean()) if len(accepted) else 0.0,
            "per_class": funnel_by_class,
        }
    if checkpoint_out is not None:
        from ml.checkpoint import save_checkpoint

        save_checkpoint(checkpoint_out, result.checkpoint)

    from dataclasses import asdict

    out = {
        "dataset": str(data),
        "method": method,
        "profile": profile,
        "seed": seed,
        "labels_per_class": per_class if per_class is not None else "all",
        "n_labelled": int(len(labelled)),
        "n_unlabelled": int(len(unlabelled)),
        "n_test": int(len(test_set.y)),
        "test": str(test_dir) if test_dir is not None else "manifest test split",
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "single_view_accuracy": single_view,
        "per_class": metrics["per_class"],
        "confusion": metrics["confusion"],
        "class_names": train_set.class_names,
        "pseudo_labels": pseudo,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "load_seconds": load_seconds,
        "images_per_second": result.images_per_second,
        "monitor_accuracy": (result.metrics or {}).get("accuracy"),
        "student_monitor_accuracy": student_monitor,
        "device": _device_name(device),
        "torch": torch.__version__,
        "config": asdict(config),
        "history": result.history,
    }
    print_table5([(f"{method} @{labels_per_class}/class", metrics)])
    summary = (
        f"accuracy {100 * out['accuracy']:.2f} %  macro-F1 {out['macro_f1']:.4f}  wall {out['wall_seconds']:.0f} s"
    )
    if pseudo:
        summary += f"  pseudo-labels {pseudo['funnel']} accepted accuracy {pseudo['accepted_accuracy']}"
    typer.echo(summary)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2) + "\n")
    return out


def throughput(
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="an ImageFolder; default: generated images")] = None,
    profile: Annotated[str, typer.Option("--profile")] = "cpu",
    steps: Annotated[int, typer.Option("--steps", help="timed training steps per loop")] = 40,
    images: Annotated[int, typer.Option("--images", help="images to load for the leukolab loop")] = 2000,
    reference_workers: Annotated[
        int, typer.Option("--reference-workers", help="DataLoader workers of the reference")
    ] = 0,
) -> dict:
    """Training and inference images/s: leukolab's loop against torchvision ImageFolder +
    DataLoader + per-image PIL transforms, same model, same process."""
    from ml.throughput import measure

    out = measure(data=data, profile=profile, steps=steps, images=images, reference_workers=reference_workers)
    typer.echo(json.dumps(out, indent=2))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2) + "\n")
    return out


app = typer.Typer(help="leukolab ml benchmarks (standalone)", no_args_is_help=True, add_completion=False)
app.command("ssl")(ssl)
app.command("throughput")(throughput)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
