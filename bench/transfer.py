"""``leukolab bench transfer``: a reference model in a simulated new lab.

DIR is one source of other labs' cells (an ImageFolder, e.g. one folder of zheng-dev). Each of
``--splits`` random splits labels N cells per class (every cell of a class with N or fewer) and
leaves the rest as the lab's unlabelled cells, which are also the test cells. N = 0 is the
reference alone (with ``--adapt-bn``, its BatchNorm statistics re-estimated on the unlabelled
cells first; with ``--adapt-zoom``, at the input zoom the network is surest of; with
``--adapt-im``, its BatchNorm scales and shifts then trained on them without labels, ``ml.adapt``),
one split, since it draws nothing at random. N > 0 fine-tunes from the reference, briefly, with
the lab's unlabelled cells when the method uses them, after fitting its BatchNorm statistics and
head to the lab (``ml.transfer.fit_to_lab``, with ``--adapt-im`` its BatchNorm scales and shifts trained
on the lab's cells first; ``--no-fit`` skips that).

torch is imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.ssl import write_json

FINETUNE_METHODS = ("supervised", "mean-teacher", "fixmatch")


def split_metrics(truth: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """``ml.metrics.classification_metrics``, with macro-F1 over the classes that have test cells
    (a class whose every cell was labelled has none to be scored on)."""
    from ml.metrics import classification_metrics

    metrics = classification_metrics(truth, predicted, class_names)
    present = [name for name in class_names if metrics["per_class"][name]["support"] > 0]
    metrics["macro_f1"] = float(np.mean([metrics["per_class"][n]["f1"] for n in present])) if present else 0.0
    return metrics


def summarise(runs: list[dict], class_names: list[str], counts: dict[str, int]) -> dict:
    """Mean and sd over splits; per class, the mean over the splits that had test cells of it."""
    acc = np.asarray([r["accuracy"] for r in runs])
    f1 = np.asarray([r["macro_f1"] for r in runs])
    per_class = {}
    for name in class_names:
        scored = [r["per_class"][name] for r in runs if r["per_class"][name]["support"] > 0]
        per_class[name] = {
            "n": counts.get(name, 0),
            "n_test_mean": float(np.mean([r["per_class"][name]["support"] for r in runs])),
            "splits_scored": len(scored),
            "recall": float(np.mean([s["recall"] for s in scored])) if scored else None,
            "recall_sd": float(np.std([s["recall"] for s in scored])) if scored else None,
            "precision": float(np.mean([s["precision"] for s in scored])) if scored else None,
            "f1": float(np.mean([s["f1"] for s in scored])) if scored else None,
        }
    return {
        "accuracy": float(acc.mean()),
        "accuracy_sd": float(acc.std()),
        "macro_f1": float(f1.mean()),
        "macro_f1_sd": float(f1.std()),
        "per_class": per_class,
    }


def run_transfer(
    reference: Path,
    data: Path,
    labels_per_class: int,
    splits: int = 5,
    seed: int = 0,
    adapt_bn: bool = False,
    adapt_zoom: bool = False,
    adapt_im: bool = False,
    method: str = "mean-teacher",
    profile: str = "cpu",
    epochs: int = 5,
    steps_per_epoch: int = 20,
    fit_first: bool = True,
    overrides: dict | None = None,
    keep: float = 1.0,
    log=typer.echo,
) -> dict:
    import torch

    from ml.adapt import adapt_batchnorm, adapt_information, adapt_to_lab
    from ml.checkpoint import load_checkpoint, load_model
    from ml.data import load_image_folder, resize, split_labelled
    from ml.device import device_name, pick_device
    from ml.infer import predict
    from ml.transfer import finetune, finetune_config

    started = time.perf_counter()
    checkpoint = load_checkpoint(reference)
    names = list(checkpoint["class_names"])
    size = int(checkpoint["model_config"]["image_size"])
    images = load_image_folder(data, size)
    unknown = sorted(set(images.class_names) - set(names))
    if not len(images.y):
        raise typer.BadParameter(f"{data} has no images in class sub-folders", param_hint="--data")
    known = np.isin(np.asarray(images.class_names)[images.y.numpy()], names)
    x = resize(images.x[torch.from_numpy(known)], size)
    y = np.asarray([names.index(images.class_names[int(c)]) for c in images.y.numpy()[known]], dtype=np.int64)
    counts = {name: int((y == i).sum()) for i, name in enumerate(names)}
    config = finetune_config(
        checkpoint, method=method, profile=profile, epochs=epochs, steps_per_epoch=steps_per_epoch, **(overrides or {})
    )
    runs = []
    adapt_bn = adapt_bn or adapt_zoom or adapt_im
    n_splits = splits if labels_per_class > 0 else 1  # the reference alone (adapted or not) is deterministic
    zoom_choice: dict = {}  # N = 0 with --adapt-zoom: the zoom kept and the entropy of each tried
    for split in range(n_splits):
        if labels_per_class > 0:
            labelled, rest = split_labelled(y, labels_per_class, seed + split)
        else:
            labelled, rest = np.empty(0, np.int64), np.arange(len(y))
        t0 = time.perf_counter()
        if len(labelled):
            result = finetune(
                checkpoint,
                x[torch.from_numpy(labelled)],
                torch.from_numpy(y[labelled]),
                x[torch.from_numpy(rest)],
                names,
                config=config,
                seed=seed + split,
                fit_first=fit_first,
                keep=keep,
                adapt_im=adapt_im,
            )
            model = load_model(result.checkpoint, device=pick_device())
        else:
            model = load_model(checkpoint, device=pick_device())
            if adapt_zoom:
                model, entropies = adapt_to_lab(model, x[torch.from_numpy(rest)])
                zoom_choice = {"input_zoom": model.input_zoom, "zoom_entropy": entropies}
            elif adapt_bn:
                model = adapt_batchnorm(model, x[torch.from_numpy(rest)])
            if adapt_im:  # on the statistics just adapted (at the zoom chosen, with --adapt-zoom)
                model = adapt_information(model, x[torch.from_numpy(rest)], seed=seed)
        predicted = predict(model, x[torch.from_numpy(rest)]).labels
        metrics = split_metrics(y[rest], predicted, names)
        metrics.update(split=split, n_labelled=int(len(labelled)), n_test=int(len(rest)))
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        runs.append(metrics)
        log(
            f"split {split}: accuracy {100 * metrics['accuracy']:.1f} %  "
            f"macro-F1 {metrics['macro_f1']:.3f}  ({metrics['seconds']} s)"
        )
    out = {
        "reference": str(reference),
        "reference_data": (checkpoint.get("reference_card") or {}).get("data", {}).get("name"),
        "data": str(data),
        "source": Path(data).name,
        "labels_per_class": labels_per_class,
        "adapt_bn": bool(adapt_bn and labels_per_class == 0),
        "adapt_zoom": bool(adapt_zoom and labels_per_class == 0),
        "adapt_im": bool(adapt_im and (labels_per_class == 0 or fit_first)),
        **zoom_choice,
        "method": method if labels_per_class > 0 else "reference",
        "fit_to_lab": bool(fit_first and labels_per_class > 0),
        "finetune_overrides": dict(overrides or {}) if labels_per_class > 0 else {},
        "finetune_keep": keep if labels_per_class > 0 else None,
        "splits": n_splits,
        "seed": seed,
        "n": int(len(y)),
        "n_per_class": counts,
        "classes_ignored": unknown,
        **summarise(runs, names, counts),
        "class_names": names,
        "runs": runs,
        "finetune_config": asdict(config) if labels_per_class > 0 else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "device": device_name(pick_device()),
        "torch": str(torch.__version__),
    }
    return out


def transfer_command(
    reference: Annotated[Path, typer.Option("--reference", help="a reference checkpoint (leukolab reference build)")],
    data: Annotated[Path, typer.Option("--data", help="one source of other labs' cells: an ImageFolder")],
    labels_per_class: Annotated[int, typer.Option("--labels-per-class", help="the lab's labels per class (0: none)")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    splits: Annotated[int, typer.Option("--splits", help="random splits (N = 0 takes one: it draws nothing)")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    adapt_bn: Annotated[
        bool, typer.Option("--adapt-bn/--no-adapt-bn", help="N = 0: BatchNorm statistics from the unlabelled cells")
    ] = False,
    adapt_zoom: Annotated[
        bool,
        typer.Option(
            "--adapt-zoom/--no-adapt-zoom", help="N = 0: --adapt-bn at the input zoom the network is surest of"
        ),
    ] = False,
    adapt_im: Annotated[
        bool,
        typer.Option(
            "--adapt-im/--no-adapt-im",
            help="--adapt-bn, then the BatchNorm scales and shifts trained on the lab's cells without labels "
            "(information maximisation); N > 0: in the fit to the lab, before the head",
        ),
    ] = False,
    method: Annotated[
        str, typer.Option("--method", help=f"fine-tuning: {', '.join(FINETUNE_METHODS)}")
    ] = "mean-teacher",
    profile: Annotated[str, typer.Option("--profile")] = "cpu",
    epochs: Annotated[int, typer.Option("--epochs", help="fine-tuning epochs (of --steps-per-epoch)")] = 5,
    steps_per_epoch: Annotated[int, typer.Option("--steps-per-epoch")] = 20,
    fit_first: Annotated[
        bool,
        typer.Option(
            "--fit/--no-fit",
            help="N > 0: BatchNorm statistics from the lab's cells and a head fitted on its labels before fine-tuning",
        ),
    ] = True,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="N > 0: a fine-tuning config setting key=value; repeatable")
    ] = None,
    keep: Annotated[
        float,
        typer.Option(
            "--keep",
            min=0.0,
            max=1.0,
            help="N > 0: this share of the fine-tuned weights, the rest the fitted reference's (WiSE-FT; 1: off)",
        ),
    ] = 1.0,
) -> dict:
    """The reference model in a simulated new lab: N labels per class, the rest unlabelled and test."""
    if labels_per_class < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--labels-per-class")
    if method not in FINETUNE_METHODS:
        raise typer.BadParameter(f"use one of {', '.join(FINETUNE_METHODS)}", param_hint="--method")
    if not reference.is_file():
        raise typer.BadParameter(f"{reference} is not a file", param_hint="--reference")
    if not data.is_dir():
        raise typer.BadParameter(f"{data} is not a folder", param_hint="--data")
    from ml.config import parse_overrides

    try:
        settings = parse_overrides(overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--set") from None
    out = run_transfer(
        reference,
        data,
        labels_per_class,
        splits=splits,
        seed=seed,
        adapt_bn=adapt_bn,
        adapt_zoom=adapt_zoom,
        adapt_im=adapt_im,
        method=method,
        profile=profile,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        fit_first=fit_first,
        overrides=settings,
        keep=keep,
    )
    recalls = "  ".join(
        f"{name[:4]} {pc['recall']:.2f}" if pc["recall"] is not None else f"{name[:4]} -"
        for name, pc in out["per_class"].items()
    )
    typer.echo(
        f"{out['source']} N={labels_per_class}: "
        f"accuracy {100 * out['accuracy']:.1f} ± {100 * out['accuracy_sd']:.1f} %  "
        f"macro-F1 {out['macro_f1']:.3f}  recall {recalls}"
    )
    if json_out is not None:
        write_json(json_out, out)
    return out
