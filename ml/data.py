"""Datasets as one uint8 tensor N×3×S×S in memory (on the GPU when there is one)."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ml.device import cpu_bf16_pays
from ml.images import model_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    x: torch.Tensor  # uint8 N×3×S×S
    y: torch.Tensor  # int64 N
    class_names: list[str]
    files: list[str]


def autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast: always on CUDA; on the CPU where ``cpu_bf16`` is set and bf16 is native and
    measured faster there (``ml.device.cpu_bf16_pays``: 1.5-1.8× faster training on a Zen 4 core, at
    some accuracy: docs/results.md; no faster on a Xeon without AMX, so float32 there)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, cpu_bf16))


def uses_bf16(device: torch.device, cpu_bf16: bool = False) -> bool:
    """Whether ``autocast(device, cpu_bf16)`` trains in bf16 (what benchmark reports record)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_bf16_pays())


def train_precision(device: torch.device, cpu_bf16: bool = False) -> str:
    """What ``autocast(device, cpu_bf16)`` trains in, "bf16" or "float32", as reports and runs record it: a CPU may
    name AVX-512 BF16 in its device string and still train in float32, where bf16 is slower on it."""
    return "bf16" if uses_bf16(device, cpu_bf16) else "float32"


def _load_one(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        return model_input(image, size)


def load_images(paths: list[Path], size: int, workers: int = 4) -> torch.Tensor:
    """Decode and resize ``paths`` with ``ml.images.model_input`` into one uint8 tensor."""
    if not paths:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda p: _load_one(p, size), paths, chunksize=64))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_manifest(root: str | Path) -> list[dict]:
    with open(Path(root) / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_manifest_split(root: str | Path, split: str, size: int, class_names: list[str] | None = None) -> ImageSet:
    """The rows of ``root/MANIFEST.csv`` of ``split`` (``train`` excludes the fixed validation
    cells: ``_split_rows``). Classes sort by name, as in torchvision's ImageFolder, unless
    ``class_names`` is given."""
    rows = read_manifest(root)
    if class_names is None:
        class_names = sorted({r["label"] for r in rows})
    index = {name: i for i, name in enumerate(class_names)}
    rows = _split_rows(root, rows, split)
    files = [r["file"] for r in rows]
    x = load_images([Path(root) / f for f in files], size)
    y = torch.tensor([index[r["label"]] for r in rows], dtype=torch.long)
    return ImageSet(x, y, list(class_names), files)


def _split_rows(root: str | Path, rows: list[dict], split: str) -> list[dict]:
    """``train`` is the manifest's train split less the fixed validation cells (``ml.splits``),
    ``validation`` those cells, ``train+validation`` the whole train split; other names as written."""
    from ml.splits import VALIDATION, validation_files

    if split == "train+validation":
        return [r for r in rows if r["split"] == "train"]
    if split not in ("train", VALIDATION):
        return [r for r in rows if r["split"] == split]
    held_out = validation_files(root, rows)
    keep = (lambda f: f in held_out) if split == VALIDATION else (lambda f: f not in held_out)
    return [r for r in rows if r["split"] == "train" and keep(r["file"])]


def load_image_folder(root: str | Path, size: int, class_names: list[str] | None = None) -> ImageSet:
    """An ImageFolder layout (one sub-folder per class), no manifest needed."""
    root = Path(root)
    if class_names is None:
        class_names = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for i, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                files.append(p)
                labels.append(i)
    x = load_images(files, size)
    return ImageSet(
        x, torch.tensor(labels, dtype=torch.long), list(class_names), [str(f.relative_to(root)) for f in files]
    )


def split_labelled(y: torch.Tensor, per_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``per_class`` labelled samples per class (all with None) and of the rest,
    fixed by ``seed``."""
    y = np.asarray(y)
    if per_class is None:
        return np.arange(len(y)), np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    labelled = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.arange(len(y)), labelled)
    return labelled, rest


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to the model's ``size`` (the tiny profile trains at 32 px; cells are 64)."""
    if x.shape[-1] == size or len(x) == 0:
        return x if len(x) else torch.empty(0, 3, size, size, dtype=torch.uint8)
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
