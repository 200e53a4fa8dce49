"""A trained network as a portable file (ONNX or TorchScript) with its model card beside it.

The card is plain JSON a person or a pipeline can read without torch: the classes in output
order, the input the network expects, its validation metrics per class, how many expert
labels and pseudo-labels trained it, the training config and the code that produced it.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

from ml.checkpoint import export_onnx, export_torchscript, load_model, model_config_of
from ml.files import atomic_write_text

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
CARD_VERSION = 1
_ROOT = Path(__file__).resolve().parent.parent


def card_path(network_path: str | os.PathLike) -> Path:
    """Where the card of ``network_path`` goes: ``model.onnx`` → ``model.card.json``."""
    network_path = Path(network_path)
    return network_path.with_name(f"{network_path.stem}.card.json")


@lru_cache
def code_version() -> dict:
    """The leukolab package version and, when run from a git checkout, its commit."""
    try:
        package = metadata.version("leukolab")
    except metadata.PackageNotFoundError:
        package = None
    commit = os.environ.get("LEUKOLAB_GIT_COMMIT")  # set by image builds, which carry no .git
    if commit is None:
        try:
            done = subprocess.run(
                ["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
            )
            if done.returncode == 0 and done.stdout.strip():
                commit = done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"leukolab": package, "git_commit": commit, "torch": torch.__version__}


def model_card(checkpoint: dict, *, format: str, file_name: str, facts: dict) -> dict:
    """The card of ``checkpoint``'s teacher exported as ``format``; ``facts`` adds what the
    checkpoint does not know (model version, label counts, stored metrics)."""
    config = model_config_of(checkpoint)
    metrics = facts.get("metrics") or checkpoint.get("metrics") or {}
    normalization = checkpoint.get("normalization") or {
        "mean": list(config.mean),
        "std": list(config.std),
        "scale": "pixels 0-255",
    }
    return {
        "card_version": CARD_VERSION,
        "format": format,
        "file": file_name,
        "weights": "teacher (the mean-teacher EMA weights, as served by leukolab)",
        "model_version": facts.get("model_version"),
        "training_run": facts.get("run_id"),
        "created_at": facts.get("created_at"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": {"arch": config.arch, "width": config.width, "image_size": config.image_size},
        "classes": list(checkpoint["class_names"]),
        "input": {
            "name": "image",
            "shape": ["batch", 3, config.image_size, config.image_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "range": "pixels 0-255, not normalised: the network subtracts the mean and divides by the std itself",
            "image_size": config.image_size,
            "preparation": "centre-crop to a square, resize to image_size (LANCZOS when shrinking)",
            "normalization": normalization,
        },
        "output": {
            "name": "logits",
            "shape": ["batch", len(checkpoint["class_names"])],
            "probabilities": "softmax over the last axis, in the order of classes",
        },
        "test_time_augmentation": {
            "in_leukolab": bool(config.tta),
            "in_this_file": False,
            "note": "leukolab averages the eight flips/transposes when true; this file computes one view",
        },
        "metrics": {
            "accuracy": metrics.get("accuracy"),
            "macro_f1": metrics.get("macro_f1"),
            "per_class": metrics.get("per_class") or {},
            "validated_on": "held-out expert labels of the training run",
        },
        "labels": {"expert": facts.get("expert_labels"), "pseudo": facts.get("pseudo_labels")},
        "training_config": checkpoint.get("train_config"),
        "code_version": code_version(),
    }


def export_model(checkpoint: dict, network_path: str | os.PathLike, *, format: str, facts: dict) -> Path:
    """Write ``checkpoint``'s teacher to ``network_path`` as ``format`` and its card beside it;
    returns the card's path. Both files are written atomically."""
    if format not in FORMATS:
        raise ValueError(f"unknown model format {format!r}; use one of {', '.join(FORMATS)}")
    network_path = Path(network_path)
    network_path.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint, which="teacher", device="cpu")
    with torch.no_grad():
        (export_onnx if format == "onnx" else export_torchscript)(model, network_path)
    card = model_card(checkpoint, format=format, file_name=network_path.name, facts=facts)
    path = card_path(network_path)
    atomic_write_text(path, json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path
