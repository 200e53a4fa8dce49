"""A reference model: trained on all labels of one data set with the stain-robust recipe, shipped
as a checkpoint with a model card, so that a new lab has suggestions before its first label.

No database here: ``cli/reference.py`` installs the file into a leukolab instance.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ml.config import TrainConfig
from ml.data import ImageSet, load_image_folder, load_manifest_split
from ml.files import atomic_write_text
from ml.infer import predict
from ml.metrics import classification_metrics

CARD_SUFFIX = ".card.json"
# Licences of the data sets a reference may be trained on, by folder name (the card says which).
KNOWN_LICENCES = {
    "pbc": (
        "CC BY 4.0",
        "Acevedo et al. 2020, 'A dataset of microscopic peripheral blood cell images for development of "
        "automatic recognition systems', Data in Brief 30:105474, doi:10.1016/j.dib.2020.105474",
    ),
}


def card_path(checkpoint_path: str | os.PathLike) -> Path:
    """The model card beside a checkpoint: ``NAME.pt`` -> ``NAME.card.json``."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + CARD_SUFFIX)


def evaluate(
    checkpoint: dict, images: ImageSet, adapt_batchnorm: bool = False, adapt_zoom: bool = False, adapt_im: bool = False
) -> dict:
    """Metrics of ``checkpoint``'s teacher on ``images`` (classes matched by name; cells of a class
    the model does not know are left out); with ``adapt_batchnorm``, BatchNorm statistics
    re-estimated on these same cells first, and with ``adapt_zoom`` also the input zoom chosen on
    them, and with ``adapt_im`` the BatchNorm statistics then scales and shifts trained on them
    (``ml.adapt``; transductive, no labels used)."""
    from ml.adapt import adapt_batchnorm as adapt
    from ml.adapt import adapt_information, adapt_to_lab
    from ml.checkpoint import load_model
    from ml.data import resize

    names = list(checkpoint["class_names"])
    model = load_model(checkpoint)
    known = [i for i, name in enumerate(images.class_names) if name in names]
    keep = np.isin(images.y.numpy(), known)
    x = resize(images.x[torch.from_numpy(keep)], model.config.image_size)
    truth = np.asarray([names.index(images.class_names[int(c)]) for c in images.y.numpy()[keep]], dtype=np.int64)
    zooms = None
    if adapt_zoom:
        model, zooms = adapt_to_lab(model, x)
    elif adapt_batchnorm or adapt_im:
        model = adapt(model, x)
    if adapt_im:
        model = adapt_information(model, x)
    predicted = predict(model, x).labels
    metrics = classification_metrics(truth, predicted, names)
    metrics["n"] = int(len(truth))
    if zooms is not None:
        metrics.update(input_zoom=model.input_zoom, zoom_entropy=zooms)
    return metrics


def transfer_sets(folders: list[Path], size: int) -> dict[str, ImageSet]:
    """Every ImageFolder under each of ``folders`` (a folder with class sub-folders is one set;
    a folder of such folders, like zheng-dev, gives one set per source)."""
    sets: dict[str, ImageSet] = {}
    for folder in folders:
        sources = [folder] if _is_image_folder(folder) else sorted(p for p in folder.iterdir() if _is_image_folder(p))
        for source in sources:
            sets[source.name] = load_image_folder(source, size)
    return sets


def _is_image_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    from ml.data import IMAGE_SUFFIXES

    return any(
        sub.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()) for sub in path.iterdir()
    )


def build(
    data: Path,
    config: TrainConfig,
    transfer: list[Path] | None = None,
    evaluate_test: bool = True,
    progress: Callable | None = None,
) -> tuple[dict, dict]:
    """Train ``config`` on every label of ``data``'s train split (the fixed validation cells held
    out for the learning curve and the OOD threshold); evaluate on the validation split, the test
    split (once, when ``evaluate_test``) and each ``transfer`` set (alone and with BatchNorm
    adaptation). Returns (checkpoint, model card)."""
    from ml.train import train

    started = time.perf_counter()
    train_set = load_manifest_split(data, "train", config.image_size)
    validation = load_manifest_split(data, "validation", config.image_size, class_names=train_set.class_names)
    result = train(
        config,
        train_set.x,
        train_set.y,
        None,
        train_set.class_names,
        val_x=validation.x,
        val_y=validation.y,
        progress=progress,
    )
    checkpoint = result.checkpoint
    evaluations: dict = {"validation": evaluate(checkpoint, validation)}
    if evaluate_test:
        test = load_manifest_split(data, "test", config.image_size, class_names=train_set.class_names)
        evaluations["test"] = evaluate(checkpoint, test)
    transfer_metrics = {}
    for name, images in transfer_sets(list(transfer or []), config.image_size).items():
        transfer_metrics[name] = {
            "reference": evaluate(checkpoint, images),
            "adapted_batchnorm": evaluate(checkpoint, images, adapt_batchnorm=True),
            "adapted_lab": evaluate(checkpoint, images, adapt_zoom=True),
            "adapted_im": evaluate(checkpoint, images, adapt_im=True),
        }
    licence, citation = KNOWN_LICENCES.get(Path(data).resolve().name, ("unknown: see the data set", ""))
    card = {
        "kind": "leukolab reference model",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {
            "path": str(data),
            "name": Path(data).resolve().name,
            "licence": licence,
            "citation": citation,
            "n_train": int(len(train_set.y)),
            "per_class_train": {name: int((train_set.y == i).sum()) for i, name in enumerate(train_set.class_names)},
            "n_validation": int(len(validation.y)),
        },
        "class_names": list(train_set.class_names),
        "method": config.method,
        "profile": config.profile,
        "config": asdict(config),
        "metrics": evaluations,
        "transfer": transfer_metrics,
        "transfer_note": "other labs' cells (measured, never trained on); 'adapted_batchnorm' re-estimates the "
        "BatchNorm statistics on the same unlabelled cells first; 'adapted_lab' also chooses the input zoom on them; "
        "'adapted_im' trains the BatchNorm scales and shifts on them after the statistics, without labels",
        "train_seconds": round(result.wall_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torch": str(torch.__version__),
    }
    checkpoint["reference_card"] = card
    return checkpoint, card


def write_card(path: str | os.PathLike, card: dict) -> Path:
    """Write ``card`` as JSON beside the checkpoint at ``path`` and a markdown summary, both atomically."""
    target = card_path(path)
    atomic_write_text(target, json.dumps(card, indent=2) + "\n")
    atomic_write_text(target.with_suffix(".md"), card_markdown(card))
    return target


def card_markdown(card: dict) -> str:
    """The model card as a page: data, licence, metrics and per-class recall on other labs' cells."""
    data = card["data"]
    lines = [
        f"# Reference model card: {card['method']} on {data['name']}",
        "",
        f"- Data: `{data['path']}` ({data['n_train']} training cells; "
        f"{data['n_validation']} validation cells held out)",
        f"- Licence of the training data: {data['licence']}. {data['citation']}",
        f"- Classes: {', '.join(card['class_names'])}",
        f"- Profile {card['profile']}, trained in {card['train_seconds']} s; created {card['created']}",
        "",
        "| cells | n | accuracy | macro F1 | " + " | ".join(f"{n[:4]} recall" for n in card["class_names"]) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(card["class_names"]),
    ]

    def row(label: str, metrics: dict) -> str:
        recalls = " | ".join(
            f"{metrics['per_class'][n]['recall']:.2f} ({metrics['per_class'][n]['support']})"
            for n in card["class_names"]
        )
        return (
            f"| {label} | {metrics['n']} | {100 * metrics['accuracy']:.1f} % | {metrics['macro_f1']:.3f} | {recalls} |"
        )

    for split, metrics in card["metrics"].items():
        lines.append(row(f"{data['name']} {split}", metrics))
    for source, variants in card["transfer"].items():
        for variant, metrics in variants.items():
            lines.append(row(f"{source} ({variant.replace('_', ' ')})", metrics))
    lines += ["", card["transfer_note"], ""]
    return "\n".join(lines)
