"""``leukolab bench ood``: how well a checkpoint's "unlike any known class" score tells cells of
unknown classes from cells of the classes it knows.

The score's method and threshold were fixed in training, on validation cells of the known
classes (``ml.ood``); this benchmark only measures them. The other methods' AUROC is reported
beside it for reference (measured on the benchmark's data, so not for choosing). ``--refit``
also fits the score again on the network (``refit``: the train and validation splits of ``--in``,
with the morphology descriptors of ``ml.morphology``) and measures that the same way.
torch is imported inside the function, so that importing this module stays cheap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.ssl import write_json


def _load(folder: Path, size: int, split: str, class_names: list[str] | None = None):
    """An ImageFolder; a folder with a MANIFEST.csv gives the rows of ``split`` (all rows if it has none)."""
    from ml.data import load_image_folder, load_manifest_split, read_manifest

    if (folder / "MANIFEST.csv").exists():
        splits = {r["split"] for r in read_manifest(folder)}
        if split in splits:
            return load_manifest_split(folder, split, size, class_names=class_names)
        return (
            load_manifest_split(folder, sorted(splits)[0], size, class_names=class_names) if len(splits) == 1 else None
        )
    return load_image_folder(folder, size, class_names=class_names)


def _report(scorer, p_in, p_out, d_in, d_out, y_out, unknown_names: list[str], names: list[str]) -> dict:
    """AUROC, FPR at 95 % TPR and what the threshold flags of ``scorer``, overall and per unknown class."""
    from ml.ood import auroc, fpr_at_tpr

    s_in = scorer.score(p_in.logits, p_in.features, descriptors=d_in, layers=p_in.layers)
    s_out = scorer.score(p_out.logits, p_out.features, descriptors=d_out, layers=p_out.layers)
    per_class = {}
    for c, name in enumerate(unknown_names):
        members = y_out == c
        if members.any():
            predicted = np.bincount(p_out.probs[members].argmax(axis=1), minlength=len(names))
            per_class[name] = {
                "n": int(members.sum()),
                "auroc": auroc(s_in, s_out[members]),
                "fpr_at_95tpr": fpr_at_tpr(s_in, s_out[members]),
                "flagged_at_threshold": float((s_out[members] > scorer.threshold).mean()),
                "msp_auroc": auroc(-p_in.probs.max(axis=1), -p_out.probs[members].max(axis=1)),
                "called": {names[i]: round(float(n / members.sum()), 3) for i, n in enumerate(predicted) if n},
            }
    return {
        "n_in": int(len(s_in)),
        "n_ood": int(len(s_out)),
        **scorer.summary(),
        "selection_auroc (validation, leave one known class out)": scorer.selection,
        "auroc": auroc(s_in, s_out),
        "fpr_at_95tpr": fpr_at_tpr(s_in, s_out),
        "tpr_at_threshold": float((s_in <= scorer.threshold).mean()),
        "flagged_at_threshold": float((s_out > scorer.threshold).mean()),
        "msp_auroc": auroc(-p_in.probs.max(axis=1), -p_out.probs.max(axis=1)),
        "per_class": per_class,
    }


def _per_class_auroc(scorer, p_in, p_out, d_in, d_out, y_out, unknown_names: list[str]) -> dict:
    from ml.ood import auroc

    a = scorer.score(p_in.logits, p_in.features, descriptors=d_in, layers=p_in.layers)
    b = scorer.score(p_out.logits, p_out.features, descriptors=d_out, layers=p_out.layers)
    return {
        "auroc": auroc(a, b),
        "per_class": {n: auroc(a, b[y_out == c]) for c, n in enumerate(unknown_names) if (y_out == c).any()},
    }


def refit(model, checkpoint: dict, in_dir: Path, names: list[str], size: int) -> dict:
    """The OOD score fitted again on a trained network, as ``ml.train.fit_ood_for`` does in training:
    the reference from ``in_dir``'s train split (at most ``ood_reference_cells``, a seeded draw;
    labelled with the network's own predictions, as pseudo-labels are: no label beyond training's),
    the method and threshold from its validation split (true labels, known classes only); with the
    morphology descriptors. Every method's scorer is returned, fitted the same way ("auto": the one
    chosen on validation)."""
    import torch

    from ml.config import config_from_dict
    from ml.data import load_manifest_split
    from ml.infer import predict
    from ml.morphology import describe
    from ml.ood import ALL_METHODS, fit_ood
    from ml.splits import VALIDATION
    from ml.train import ood_needs_layers, ood_reference

    config = config_from_dict(checkpoint.get("train_config"))
    if not (in_dir / "MANIFEST.csv").exists():
        raise typer.BadParameter(f"--refit needs a MANIFEST folder with a train split: {in_dir}")
    train = load_manifest_split(in_dir, "train", size, class_names=names)
    validation = load_manifest_split(in_dir, VALIDATION, size, class_names=names)
    if len(train.x) < 2 or not len(validation.x):
        raise typer.BadParameter(f"--refit needs train and validation cells in {in_dir}/MANIFEST.csv")
    # the draw does not look at the labels: predict the drawn cells only
    ref_x, _ = ood_reference(train.x, torch.zeros(len(train.x)), 0, config.seed, config.ood_reference_cells)
    ref, val = predict(model, ref_x, layers=True), predict(model, validation.x, layers=True)
    ref_y = ref.probs.argmax(axis=1)
    d_ref, d_val = describe(ref_x), describe(validation.x)
    fitted = {}
    for method in ("auto", *ALL_METHODS):
        fitted[method] = fit_ood(
            ref.features,
            ref_y,
            val.logits,
            val.features,
            validation.y.numpy(),
            len(names),
            method=method,
            target_tpr=config.ood_target_tpr,
            train_descriptors=d_ref,
            val_descriptors=d_val,
            descriptor_size=size,
            # the mid-level features as training gives them (config.ood_layers), and to the method that needs them
            **({"train_layers": ref.layers, "val_layers": val.layers} if ood_needs_layers(config, method) else {}),
        )
    return fitted


def held_out_only(unknown, ood_dir: Path):
    """The unknown cells that ``bench ssl --extra-classes`` puts in its test set (``extra_class_rows``),
    so a figure on them stays apart from the rest, which a developer may study to design the score."""
    import torch

    from bench.ssl import extra_class_rows
    from ml.data import ImageSet

    test_files = set(extra_class_rows(ood_dir, unknown.class_names)["test"][0])
    keep = [i for i, f in enumerate(unknown.files) if f in test_files]
    if not keep:
        raise typer.BadParameter(f"--held-out-only: no cell of {ood_dir} is in the extra classes' test set")
    index = torch.tensor(keep)
    return ImageSet(unknown.x[index], unknown.y[index], unknown.class_names, [unknown.files[i] for i in keep])


def measure(
    checkpoint_path: Path,
    in_dir: Path,
    ood_dir: Path,
    split: str = "test",
    refit_ood: bool = False,
    held_out: bool = False,
) -> dict:
    """AUROC and FPR at 95 % TPR of the checkpoint's OOD score, overall and per unknown class; with
    ``refit_ood`` also of the score fitted again with morphology (``refit``); with ``held_out`` on the
    unknown cells of the eight-class test set only (``held_out_only``)."""
    from ml.checkpoint import load_checkpoint, load_model
    from ml.infer import predict
    from ml.morphology import describe
    from ml.ood import LAYERS_METHOD, OOD_METHODS, OODScorer, _mix_stats, _parts_of

    checkpoint = load_checkpoint(checkpoint_path)
    if not checkpoint.get("ood"):
        raise typer.BadParameter(f"{checkpoint_path} has no OOD score: train it with this version of leukolab")
    model = load_model(checkpoint)
    names = list(checkpoint["class_names"])
    size = model.config.image_size
    known = _load(in_dir, size, split, class_names=names)
    unknown = _load(ood_dir, size, split)
    if known is None or unknown is None:
        raise typer.BadParameter("a MANIFEST folder with several splits and none named --split")
    if held_out:
        unknown = held_out_only(unknown, ood_dir)
    scorer = OODScorer.from_state(checkpoint["ood"])
    # mid-level features only where a score here compares them: the stored one's reference, or the refit's knn-layers
    layers = refit_ood or bool(scorer.reference.layers)
    p_in, p_out = predict(model, known.x, layers=layers), predict(model, unknown.x, layers=layers)
    d_in, d_out = describe(known.x), describe(unknown.x)
    y_out = unknown.y.numpy()
    args = (p_in, p_out, d_in, d_out, y_out, unknown.class_names)
    stored = _report(scorer, *args, names)
    stored.pop("selection_auroc", None)
    classes = np.arange(len(names))
    reference = {}
    network = (*OOD_METHODS, LAYERS_METHOD) if scorer.reference.layers else OOD_METHODS
    for method in network:
        parts = _parts_of(method, scorer.reference) or ()
        stats = scorer.mix_stats if set(parts) == set(scorer.mix_stats) else {}
        if parts and not stats:
            stats = _mix_stats(p_in.logits, p_in.features, scorer.reference, classes, method, p_in.layers)
        other = OODScorer(method, scorer.threshold, scorer.reference, stats)
        reference[method] = _per_class_auroc(other, *args)
    out = {
        "checkpoint": str(checkpoint_path),
        "in": str(in_dir),
        "in_split": split,
        "ood": str(ood_dir),
        "ood_cells": "the eight-class test set's (held out)" if held_out else "all",
        **stored,
        "all_methods_for_reference": reference,
    }
    if refit_ood:
        fitted = refit(model, checkpoint, in_dir, names, size)
        out["refit"] = {
            **_report(fitted["auto"], *args, names),
            "fitted_on": "the train split (network's predictions as labels) and the validation split of --in",
            "all_methods_for_reference": {m: _per_class_auroc(s, *args) for m, s in fitted.items() if m != "auto"},
        }
        out["refit"].pop("selection_auroc", None)
    return out


def ood_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="a checkpoint saved by leukolab (bench ssl --checkpoint)")
    ],
    in_dir: Annotated[Path, typer.Option("--in", help="ImageFolder (or MANIFEST folder) of known-class cells")],
    ood_dir: Annotated[Path, typer.Option("--ood", help="ImageFolder of unknown cells, one folder per kind")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    split: Annotated[str, typer.Option("--split", help="the MANIFEST split of --in to use")] = "test",
    refit_ood: Annotated[
        bool,
        typer.Option("--refit", help="also fit the score again on --in's train and validation splits, with morphology"),
    ] = False,
    held_out: Annotated[
        bool,
        typer.Option(
            "--held-out-only",
            help="only the --ood cells of bench ssl --extra-classes' test set (100 a class); the rest may be studied",
        ),
    ] = False,
) -> dict:
    """AUROC and FPR at 95 % TPR of the checkpoint's "unlike any known class" score, per unknown class."""
    started = time.perf_counter()
    out = measure(checkpoint, in_dir, ood_dir, split, refit_ood, held_out)
    out["wall_seconds"] = time.perf_counter() - started
    summary = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in out["per_class"].items())
    typer.echo(f"{out['method']}: AUROC {out['auroc']:.3f} (per class: {summary}), FPR@95TPR {out['fpr_at_95tpr']:.3f}")
    if "refit" in out:
        r = out["refit"]
        summary = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in r["per_class"].items())
        typer.echo(f"refit {r['method']}: AUROC {r['auroc']:.3f} ({summary}), FPR@95TPR {r['fpr_at_95tpr']:.3f}")
    if json_out is not None:
        write_json(json_out, out)
    return out
