"""Generated smear fields for the sample tests: white cells as discs of known size and position."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.ml.test_locate import RED_CELL, blank, disc, expected_cell_box, wbc


def nucleus_box(cx: int, cy: int, r: int, width: int = 640, height: int = 480) -> tuple[int, int, int, int]:
    """The nucleus box the locator measures for a disc of radius ``r`` at (cx, cy), cut at the field edge."""
    return (max(0, cx - r), max(0, cy - r), min(width, cx + r + 1), min(height, cy + r + 1))


def make_field(
    cells: list[tuple[int, int, int]], width: int = 640, height: int = 480, red_cells: int = 3
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A field with a white cell per (cx, cy, r) and a few red cells; also the expected cell boxes."""
    field = blank(width, height)
    for index in range(red_cells):  # red cells along the bottom are not white cells
        disc(field, 60 + 110 * index, height - 40, 30, RED_CELL)
    for cx, cy, r in cells:
        wbc(field, cx, cy, r)
    return field, [expected_cell_box(nucleus_box(*cell, width, height), width, height) for cell in cells]


def save(path: Path, field: np.ndarray, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(field).save(path, format=fmt)
    return path


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` (a field) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
