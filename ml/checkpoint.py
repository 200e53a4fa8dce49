"""Checkpoints: written atomically, carrying their context; loading and export."""

from __future__ import annotations

import os
from dataclasses import asdict, fields

import torch
from torch import nn

from ml.files import atomic_path
from ml.model import ModelConfig, build_model

FORMAT_VERSION = 1


def make_checkpoint(
    *,
    student: nn.Module,
    teacher: nn.Module,
    model_config: ModelConfig,
    train_config,
    class_names: list[str],
    metrics: dict | None = None,
    history: list | None = None,
    step: int = 0,
) -> dict:
    def cpu_state(model: nn.Module) -> dict:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}

    return {
        "format_version": FORMAT_VERSION,
        "model_config": asdict(model_config),
        "train_config": asdict(train_config) if train_config is not None else None,
        "class_names": list(class_names),
        "normalization": {"mean": list(model_config.mean), "std": list(model_config.std), "scale": "pixels 0-255"},
        "student": cpu_state(student),
        "teacher": cpu_state(teacher),
        "metrics": metrics,
        "history": history or [],
        "step": step,
    }


def shared_class_rows(old_names: list[str], new_names: list[str]) -> list[tuple[int, int]]:
    """(new row, old row) of a classifier head for each class of ``new_names`` that ``old_names``
    has too, matched by name: how a head carries over a change of the class set."""
    old_index = {name: i for i, name in enumerate(old_names)}
    return [(new, old_index[name]) for new, name in enumerate(new_names) if name in old_index]


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Write atomically (``ml.files.atomic_path``): readers see the old file or the new one,
    never half of one."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format_version {version!r} (expected {FORMAT_VERSION})")
    return checkpoint


def model_config_of(checkpoint: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    values = {k: v for k, v in checkpoint["model_config"].items() if k in known}
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(values[key])
    return ModelConfig(**values)


def load_model(checkpoint: dict, which: str = "teacher", device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the network and load the ``which`` ("teacher" or "student") weights; eval mode."""
    if which not in ("teacher", "student"):
        raise ValueError("which must be 'teacher' or 'student'")
    model = build_model(model_config_of(checkpoint))
    model.load_state_dict(checkpoint[which])
    if device is not None:
        model.to(device)
    return model.eval()


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> None:
    """Trace the model (uint8 or float pixels N×3×S×S in, logits out) to TorchScript."""
    model = model.eval()
    size = model.config.image_size
    example = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def export_onnx(model: nn.Module, path: str | os.PathLike) -> None:
    """Export to ONNX (float pixels 0-255 N×3×S×S in, logits out; dynamic batch)."""
    model = model.eval()
    size = model.config.image_size
    example = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
