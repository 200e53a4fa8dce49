"""Decoding untrusted cell images and deriving what a ``Cell`` row keeps: PIL and numpy only."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ml.images import display_image, model_input

ACCEPTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
# Pillow's modes for unsigned 16-bit grey pixels (a 16-bit PNG or TIFF).
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnreadableImage(Exception):
    """A file that cannot become a cell; ``reason`` says why, in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedImage:
    sha256: str
    display_png: bytes
    display_size: int
    model_input: bytes  # 64×64×3 uint8, row-major RGB


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f} MP"


def _other_format(fp: BinaryIO) -> str | None:
    """The format PIL would recognise if every plugin were allowed, to name it in the reason."""
    try:
        fp.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp) as image:
                return image.format
    except Exception:  # noqa: BLE001 - we only want a better message
        return None


def declared_size(fp: BinaryIO) -> tuple[int, int] | None:
    """The width and height an accepted image's header declares, decoding no pixel; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp, formats=ACCEPTED_FORMATS) as image:
                return image.size
    except Exception:  # noqa: BLE001 - open_image names the problem later
        return None


def open_image(fp: BinaryIO, *, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Open and fully decode an accepted image from ``fp`` as 8-bit pixels, or raise ``UnreadableImage``."""
    # The size is checked from the header before any pixel is decoded. Pillow's own bomb
    # check is global state; its warning is ours to judge, its error is still a bomb.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp, formats=ACCEPTED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise UnreadableImage(f"decompression bomb: over the limit of {_megapixels(max_pixels)} ({exc})") from exc
        except UnidentifiedImageError as exc:
            other = _other_format(fp)
            if other:
                raise UnreadableImage(
                    f"unsupported image format {other}; accepted: {', '.join(ACCEPTED_FORMATS)}"
                ) from exc
            raise UnreadableImage("not an image (accepted: PNG, JPEG, TIFF, BMP)") from exc
        except Exception as exc:  # noqa: BLE001 - any parser error means a damaged header
            raise UnreadableImage(f"corrupt image header ({exc.__class__.__name__}: {exc})") from exc

    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise UnreadableImage(
            f"decompression bomb: {width}×{height} px = {_megapixels(width * height)}, "
            f"over the limit of {_megapixels(max_pixels)}"
        )
    if width == 0 or height == 0:
        image.close()
        raise UnreadableImage(f"empty image ({width}×{height} px)")
    if min(width, height) < min_side:
        image.close()
        raise UnreadableImage(
            f"too small to hold a cell: {width}×{height} px (each side must be at least {min_side} px)"
        )
    try:
        image.load()
    except OSError as exc:
        if "truncated" in str(exc):
            raise UnreadableImage(f"truncated {image.format} file: {exc}") from exc
        raise UnreadableImage(f"corrupt {image.format} data: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on bad data
        raise UnreadableImage(f"corrupt {image.format} data ({exc.__class__.__name__}: {exc})") from exc
    return _to_8bit(image)


def _to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit pixels: 16-bit grey scaled from its full range, float grey from 0–1.

    Pillow's own conversion would clip 16-bit values at 255 (a white image) and truncate
    floats of 0–1 to 0 (a black one). Other 32-bit pixels have no known range: refused.
    """
    mode = image.mode
    if mode in _UINT16_MODES or (mode == "I" and image.format == "PNG"):
        pixels = np.asarray(image).astype(np.uint32)
        if pixels.max() > 65535:
            raise UnreadableImage(f"{image.format} with pixel values over 65535 (mode {mode})")
        converted = Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8))
    elif mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise UnreadableImage(f"floating-point {image.format} with NaN or infinite pixels")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise UnreadableImage(
                f"floating-point {image.format} with values from {low:g} to {high:g}: only 0–1 can be "
                "converted; export it as 8- or 16-bit"
            )
        converted = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    elif mode in ("I", "I;32", "I;16S") or mode.startswith(("I;32", "F;")):
        raise UnreadableImage(
            f"{image.format} with 32-bit or signed integer pixels (mode {mode}) has no known brightness range; "
            "export it as 8- or 16-bit"
        )
    else:
        return image
    image.close()
    return converted


def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 of the decoded RGB pixels and size, so the same pixels in any lossless encoding match."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def prepare_image(image: Image.Image) -> PreparedImage:
    """The pixel hash, the display PNG (square, at most 256 px) and the 64×64 model input of ``image``."""
    display = display_image(image)
    buffer = BytesIO()
    # Level 1 is about 2.5× faster than the default and about 10% larger on stained cells.
    display.save(buffer, format="PNG", compress_level=1)
    return PreparedImage(
        sha256=pixel_sha256(image),
        display_png=buffer.getvalue(),
        display_size=display.width,
        model_input=model_input(display).tobytes(),
    )
