"""``python -m bench.cli pack``: a MANIFEST data set as the model's inputs, small enough to travel.

A GPU machine lent to a session receives the repository alone (at most 64 MiB with the folders it
carries), not ``../shared/data``. The PBC tiles are 89 MB as 128 px JPEGs; the same cells as the
network's 64 px inputs (``ml.images.model_input``, what ``ml.data.load_images`` makes of them) are
37.5 MB as JPEG of quality 95 with full-resolution colour (``subsampling=0``). The copy keeps every
file's name and the manifest, so the fixed validation split (``ml.splits``, by the folder's name and
the files) and the test split are the same cells. JPEG files are written as JPEG (a second, light
compression: a mean error of about one grey level); any other file as PNG, without loss.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image

JPEG_SUFFIXES = {".jpg", ".jpeg"}


def _pack_one(source: Path, target: Path, size: int, quality: int) -> int:
    from ml.images import model_input

    with Image.open(source) as image:
        pixels = model_input(image, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in JPEG_SUFFIXES:
        Image.fromarray(pixels).save(target, format="JPEG", quality=quality, subsampling=0)
    else:
        Image.fromarray(pixels).save(target, format="PNG")
    return target.stat().st_size


def pack(data: Path, out: Path, size: int = 64, quality: int = 95) -> dict:
    """Write ``data``'s manifest files as ``size`` px model inputs under ``out`` (the same relative
    names, the manifest copied). Refuses to write into ``data`` itself."""
    from ml.data import read_manifest

    data, out = Path(data), Path(out)
    if out.resolve() == data.resolve():
        raise ValueError(f"--out {out} is the data set itself: choose another folder")
    rows = read_manifest(data)
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda r: _pack_one(data / r["file"], out / r["file"], size, quality), rows))
    shutil.copyfile(data / "MANIFEST.csv", out / "MANIFEST.csv")
    return {"files": len(rows), "bytes": sum(sizes), "size": size, "quality": quality, "out": str(out)}


def pack_command(
    data: Annotated[Path, typer.Option("--data", help="a folder with MANIFEST.csv")],
    out: Annotated[Path, typer.Option("--out", help="where the packed copy goes (keep the data set's folder name)")],
    size: Annotated[int, typer.Option("--size", min=8, help="the model's input size in px")] = 64,
    quality: Annotated[int, typer.Option("--quality", min=50, max=100, help="JPEG quality for .jpg files")] = 95,
) -> None:
    """Copy a MANIFEST data set as the model's SIZE px inputs, to carry to a GPU machine."""
    report = pack(data, out, size, quality)
    typer.echo(f"{report['files']} files, {report['bytes'] / 1e6:.1f} MB in {report['out']}")
