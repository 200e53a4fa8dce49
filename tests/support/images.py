"""Small synthetic cell images, ImageFolders and zips for tests: deterministic, distinct, fast.

Each image is a pale background with a stained disc whose colour and size depend on the
class, plus seeded noise, so two calls with different seeds never give the same pixels.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp"}
# Nucleus colour per class index: purple, dark blue, grey-violet, orange-pink, deep violet, ...
_STAINS = [(120, 60, 150), (50, 40, 120), (110, 90, 140), (220, 120, 110), (80, 20, 100), (90, 90, 90)]


def make_cell_image(seed: int, size: int | tuple[int, int] = 32, cls_index: int = 0) -> Image.Image:
    """An RGB cell-like image, ``size`` px square (or ``(width, height)``), unique per ``seed``."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, cls_index])
    pixels = np.empty((height, width, 3), dtype=np.float32)
    pixels[:] = (235, 215, 220)
    ys, xs = np.mgrid[0:height, 0:width]
    radius = min(width, height) * (0.25 + 0.03 * (cls_index % 5))
    disc = (xs - width / 2) ** 2 + (ys - height / 2) ** 2 <= radius**2
    pixels[disc] = _STAINS[cls_index % len(_STAINS)]
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    """``image`` encoded as ``fmt`` (PNG, JPEG, TIFF, BMP, ...)."""
    buffer = BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def suffix(fmt: str) -> str:
    """The usual file suffix of ``fmt``."""
    return _SUFFIX.get(fmt.upper(), f".{fmt.lower()}")


def write_image(path: Path, image: Image.Image, fmt: str = "PNG") -> Path:
    """Write ``image`` to ``path`` as ``fmt``, creating folders; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(image, fmt))
    return path


def make_imagefolder(
    root: Path,
    classes: Sequence[str] = DEFAULT_CLASSES,
    per_class: int = 3,
    size: int | tuple[int, int] = 32,
    fmt: str = "PNG",
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write ``root/CLASS/CLASS_NNN.ext`` for each class; return the files per class."""
    files: dict[str, list[Path]] = {}
    for cls_index, name in enumerate(classes):
        files[name] = [
            write_image(
                root / name / f"{name}_{index:03d}{suffix(fmt)}",
                make_cell_image(seed * 100_003 + cls_index * 1_009 + index, size, cls_index),
                fmt,
            )
            for index in range(per_class)
        ]
    return files


def make_manifest_dataset(
    root: Path,
    classes: Sequence[str] = ("basophil", "eosinophil", "lymphocyte"),
    train_per_class: int = 16,
    test_per_class: int = 4,
    size: int = 48,
) -> Path:
    """An ImageFolder of ``size`` px cells with a PBC-style MANIFEST.csv (file, label, split)."""
    rows = []
    for c, name in enumerate(classes):
        for i in range(train_per_class + test_per_class):
            file = f"{name}/{name}_{i:03d}.png"
            write_image(root / file, make_cell_image(1000 * c + i, size, c))
            rows.append({"file": file, "label": name, "split": "train" if i < train_per_class else "test"})
    with (root / "MANIFEST.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_flat_folder(
    root: Path, count: int = 5, size: int | tuple[int, int] = 32, fmt: str = "PNG", seed: int = 0
) -> list[Path]:
    """Write ``count`` unlabelled images directly in ``root``; return their paths."""
    return [
        write_image(root / f"cell_{index:04d}{suffix(fmt)}", make_cell_image(seed * 100_003 + index, size), fmt)
        for index in range(count)
    ]


def zip_folder(folder: Path, zip_path: Path, *, prefix: str = "") -> Path:
    """Zip every file below ``folder`` into ``zip_path``, names below ``prefix``; return the zip."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, prefix + file.relative_to(folder).as_posix())
    return zip_path


def make_zip(entries: Mapping[str, bytes] | Iterable[tuple[str, bytes]], zip_path: Path | None = None) -> bytes:
    """A zip of ``name → bytes`` entries; names kept verbatim, also at ``zip_path``."""
    buffer = BytesIO()
    items = entries.items() if isinstance(entries, Mapping) else entries
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in items:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    if zip_path is not None:
        zip_path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def huge_png(width: int = 8000, height: int = 7000) -> bytes:
    """A valid one-colour PNG of ``width``×``height`` px that is cheap to make (1-bit pixels)."""
    return image_bytes(Image.new("1", (width, height), 1), "PNG")


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``data``: a file cut off mid-transfer."""
    return data[: max(1, int(len(data) * keep))]
