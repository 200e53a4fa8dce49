"""Image preparation shared by import (web process) and training (ml): PIL and numpy only.

A cell image is centre-cropped to a square; the display copy is at most ``DISPLAY_MAX`` px,
and the model input is derived from the display copy at ``MODEL_SIZE`` px.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DISPLAY_MAX = 256
MODEL_SIZE = 64


def square_crop(image: Image.Image) -> Image.Image:
    """Centre-crop ``image`` to a square on its shorter side."""
    width, height = image.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def display_image(image: Image.Image, max_side: int = DISPLAY_MAX) -> Image.Image:
    """Return the RGB, square, at most ``max_side`` px copy kept for display."""
    square = square_crop(image.convert("RGB"))
    if square.width > max_side:
        square = square.resize((max_side, max_side), Image.Resampling.LANCZOS)
    return square


def model_input(image: Image.Image, size: int = MODEL_SIZE) -> np.ndarray:
    """Return the model's ``size``×``size``×3 uint8 input derived from ``image``."""
    square = display_image(image)
    if square.width != size:
        square = square.resize(
            (size, size), Image.Resampling.LANCZOS if square.width > size else Image.Resampling.BICUBIC
        )
    return np.asarray(square, dtype=np.uint8)
