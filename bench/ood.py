"""``leukolab bench ood``: how well a checkpoint's "unlike any known class" score tells cells of
unknown classes from cells of the classes it knows.

The score's method and threshold were fixed in training, on validation cells of the known
classes (``ml.ood``); this benchmark only measures them. The other methods' AUROC is reported
beside it for reference (measured on the benchmark's data, so not for choosing).
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


def measure(checkpoint_path: Path, in_dir: Path, ood_dir: Path, split: str = "test") -> dict:
    """AUROC and FPR at 95 % TPR of the checkpoint's OOD score, overall and per unknown class."""
    from ml.checkpoint import load_checkpoint, load_model
    from ml.infer import predict
    from ml.ood import OOD_METHODS, OODScorer, _score, auroc, fpr_at_tpr

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
    scorer = OODScorer.from_state(checkpoint["ood"])
    p_in, p_out = predict(model, known.x), predict(model, unknown.x)
    s_in, s_out = scorer.score(p_in.logits, p_in.features), scorer.score(p_out.logits, p_out.features)
    y_out = unknown.y.numpy()
    per_class = {}
    for c, name in enumerate(unknown.class_names):
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
    classes = np.arange(len(names))
    reference = {}
    for method in OOD_METHODS:
        stats = scorer.mix_stats if method == scorer.method else {}
        if method == "mix" and not stats:
            from ml.ood import _mix_stats

            stats = _mix_stats(p_in.logits, p_in.features, scorer.reference, classes)
        a = _score(method, p_in.logits, p_in.features, scorer.reference, classes, stats)
        b = _score(method, p_out.logits, p_out.features, scorer.reference, classes, stats)
        reference[method] = {
            "auroc": auroc(a, b),
            "per_class": {n: auroc(a, b[y_out == c]) for c, n in enumerate(unknown.class_names) if (y_out == c).any()},
        }
    return {
        "checkpoint": str(checkpoint_path),
        "in": str(in_dir),
        "in_split": split,
        "ood": str(ood_dir),
        "n_in": int(len(s_in)),
        "n_ood": int(len(s_out)),
        "method": scorer.method,
        "threshold": scorer.threshold,
        "selection_auroc (validation, leave one known class out)": scorer.selection,
        "calibrated_on": scorer.calibrated_on,
        "auroc": auroc(s_in, s_out),
        "fpr_at_95tpr": fpr_at_tpr(s_in, s_out),
        "tpr_at_threshold": float((s_in <= scorer.threshold).mean()),
        "flagged_at_threshold": float((s_out > scorer.threshold).mean()),
        "msp_auroc": auroc(-p_in.probs.max(axis=1), -p_out.probs.max(axis=1)),
        "per_class": per_class,
        "all_methods_for_reference": reference,
    }


def ood_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="a checkpoint saved by leukolab (bench ssl --checkpoint)")
    ],
    in_dir: Annotated[Path, typer.Option("--in", help="ImageFolder (or MANIFEST folder) of known-class cells")],
    ood_dir: Annotated[Path, typer.Option("--ood", help="ImageFolder of unknown cells, one folder per kind")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    split: Annotated[str, typer.Option("--split", help="the MANIFEST split of --in to use")] = "test",
) -> dict:
    """AUROC and FPR at 95 % TPR of the checkpoint's "unlike any known class" score, per unknown class."""
    started = time.perf_counter()
    out = measure(checkpoint, in_dir, ood_dir, split)
    out["wall_seconds"] = time.perf_counter() - started
    summary = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in out["per_class"].items())
    typer.echo(f"{out['method']}: AUROC {out['auroc']:.3f} (per class: {summary}), FPR@95TPR {out['fpr_at_95tpr']:.3f}")
    if json_out is not None:
        write_json(json_out, out)
    return out
