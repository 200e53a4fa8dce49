"""Locate white blood cells in smear fields: the seed paper's stain threshold, morphology,
connected components and area filter, built on scikit-image and scipy.

Torch-free on purpose: the web process imports this module to turn an uploaded smear field into
cell crops. The pipeline (:func:`locate_cells`):

1. stain: ``B - red_weight*R - (1-red_weight)*G`` per pixel (Giemsa/Wright nuclei are blue-purple,
   red cells pink, background pale), averaged down to ``work_um_per_px`` for speed;
2. threshold at ``stain_threshold``, drop specks (``min_fragment_um2``), close gaps up to
   ``lobe_join_um`` and fill holes, so the lobes of one nucleus form one component;
3. label the components; a component that is too big or not convex enough is split by a watershed
   on its distance transform when every piece is a plausible nucleus, else it is kept and flagged
   ``merged``;
4. area filter (``min_nucleus_um2``, ``max_nucleus_um2``), then the nucleus box is measured at full
   resolution and grown to the whole cell (nucleus + cytoplasm) by ``cell_scale`` and ``cell_pad_um``.

Large images go through :func:`locate_large` over a :class:`FieldReader`, tile by tile with an overlap
wider than a cell; a cell belongs to the tile whose core holds its centre, so it is found once.
An OpenSlide-backed reader only has to implement :class:`FieldReader`.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi
from skimage import feature, measure, morphology, segmentation, transform

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels of the field, 0-based, x1 and y1 exclusive."""


@dataclass(frozen=True)
class LocateConfig:
    """Every parameter of the locator, with defaults that work on BCCD fields and PBC tiles."""

    um_per_px: float = 0.06
    """Pixel size of the field (a per-sample setting). BCCD's 640x480 fields: a WBC box is ~205 px for a
    ~12 µm cell, so ~0.06 µm/px."""
    work_um_per_px: float = 0.24
    """Resolution of the threshold and morphology; boxes are measured back at full resolution."""
    red_weight: float = 0.5
    stain_threshold: float = 55.0
    """On the 0-255 scale of ``B - red_weight*R - (1-red_weight)*G``."""
    min_fragment_um2: float = 0.5
    lobe_join_um: float = 1.75
    min_nucleus_um2: float = 5.0
    """Smaller stained components (platelets, stain debris) are not white cells."""
    max_nucleus_um2: float = 90.0
    """A single nucleus is smaller; a bigger component is split or flagged ``merged``."""
    split_above_um2: float = 90.0
    """Only components bigger than most single nuclei are tried for a split (lobed nuclei stay whole)."""
    min_split_piece_um2: float = 20.0
    """Touching nuclei are split only into pieces this big: the lobes of one nucleus are smaller."""
    split_min_distance_um: float = 3.5
    """Centres of touching nuclei are at least this far apart; lobes of one nucleus are closer."""
    cell_scale: float = 1.25
    """Cell box half-side = ``cell_scale`` x nucleus half-side + ``cell_pad_um``, where the nucleus half-side
    blends its own side with the longer one by ``cell_roundness`` (cells are rounder than their nuclei)."""
    cell_pad_um: float = 0.3
    cell_roundness: float = 0.5
    crop_fill: float = 0.8
    """Share of the patch side the cell box covers, as in the PBC tiles."""
    patch_px: int = 128
    """Side of a crop, the PBC tile size; the model input is made from it like from a tile."""
    min_field_px: int = 32
    max_pixels: int = 40_000_000
    """Decompression-bomb guard for :func:`read_field`: larger images go through :func:`locate_large`."""
    tile_px: int = 2048
    tile_overlap_um: float = 30.0
    """Wider than the largest cell, so a cell on a tile border lies whole in a neighbouring tile."""

    def px(self, um: float) -> float:
        return um / self.um_per_px

    def px2(self, um2: float) -> float:
        return um2 / self.um_per_px**2

    @property
    def work_factor(self) -> int:
        return max(1, round(self.work_um_per_px / self.um_per_px))


@dataclass(frozen=True)
class FoundCell:
    """One located white cell and its provenance."""

    box: Box
    centre: tuple[float, float]
    """(x, y) of the nucleus box centre; the crop is centred here."""
    nucleus_box: Box
    area_px: int
    """Nucleus pixels at full resolution."""
    touches_edge: bool
    """The cell box reached the field edge and was cut there."""
    merged: bool
    """Touching cells that could not be split: a box around more than one cell."""
    field: str | None = None

    def area_um2(self, config: LocateConfig) -> float:
        return self.area_px * config.um_per_px**2


# ---------------------------------------------------------------- errors


class FieldError(ValueError):
    """An image the locator cannot use; ``message`` says what to do about it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAnImage(FieldError):
    pass


class ImageTooLarge(FieldError):
    pass


class ImageTooSmall(FieldError):
    pass


class UnsupportedImage(FieldError):
    pass


# ---------------------------------------------------------------- reading


def as_rgb8(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Return ``image`` as an H×W×3 uint8 RGB array: 16-bit and [0, 1] float are rescaled, alpha dropped."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise UnsupportedImage(
            f"{name} has shape {array.shape}: the locator needs a colour (RGB) image, because it finds nuclei "
            "by their stain colour; export the field in colour"
        )
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return (array.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise UnsupportedImage(f"{name} is a float image with NaN or infinite values; export it as 8-bit RGB")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise UnsupportedImage(
                f"{name} is a float image with values in [{low:g}, {high:g}]; the locator reads float images "
                "only on the [0, 1] scale; export it as 8-bit RGB or rescale it to [0, 1]"
            )
        return (array * 255.0 + 0.5).astype(np.uint8)
    raise UnsupportedImage(f"{name} has pixel type {array.dtype}; export it as 8- or 16-bit RGB")


def _check_size(width: int, height: int, *, config: LocateConfig, name: str) -> None:
    if width * height > config.max_pixels:
        raise ImageTooLarge(
            f"{name} declares {width}x{height} px, more than the {config.max_pixels:,} px a single field may "
            "have; process it as a large image in tiles (leukolab's locate_large) or export smaller tiles"
        )
    if min(width, height) < config.min_field_px:
        raise ImageTooSmall(
            f"{name} is {width}x{height} px, too small to hold a white cell (at least {config.min_field_px} px "
            "a side); upload the whole field, not a cut-out"
        )


def read_field(
    source: str | Path | bytes, config: LocateConfig | None = None, *, name: str | None = None
) -> np.ndarray:
    """Decode one smear field (path or bytes) to H×W×3 uint8 RGB, or raise a :class:`FieldError`."""
    config = config or LocateConfig()
    if name is None:
        name = Path(source).name if isinstance(source, str | Path) else "the image"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError:
        raise ImageTooLarge(
            f"{name} declares more pixels than Pillow will decode safely; process it in tiles (locate_large)"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        if _is_tiff(source):  # e.g. 16-bit or float RGB, which Pillow does not decode
            return _read_tiff(source, config=config, name=name)
        raise NotAnImage(f"{name} is not an image leukolab can read ({error}); upload a JPEG, PNG or TIFF") from None
    with image:
        _check_size(*image.size, config=config, name=name)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise UnsupportedImage(
                f"{name} has {frames} pages; the locator reads one field per file: save each page as its own image"
            )
        if image.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"):
            return _pil_to_rgb(image)
        if image.format == "TIFF":
            return _read_tiff(source, config=config, name=name)
        raise UnsupportedImage(
            f"{name} is a single-channel ({image.mode}) image: the locator finds nuclei by their stain colour, so "
            "it needs a colour (RGB) image; export the field in colour"
        )


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    try:
        if image.mode in ("RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise NotAnImage(f"the image could not be decoded ({error}); it may be truncated, upload it again") from None


def _is_tiff(source: str | Path | bytes) -> bool:
    if isinstance(source, bytes):
        head = source[:4]
    else:
        with open(source, "rb") as file:
            head = file.read(4)
    return head in (b"II*\x00", b"MM\x00*")


def _read_tiff(source: str | Path | bytes, *, config: LocateConfig, name: str) -> np.ndarray:
    import tifffile

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with tifffile.TiffFile(stream) as tiff:
            if len(tiff.pages) > 1:
                raise UnsupportedImage(
                    f"{name} has {len(tiff.pages)} pages; the locator reads one field per file: "
                    "save each page as its own image"
                )
            page = tiff.pages[0]
            shape = page.shape
            height, width = (shape[1], shape[2]) if len(shape) == 3 and shape[0] in (3, 4) else shape[:2]
            _check_size(int(width), int(height), config=config, name=name)  # before decoding
            return as_rgb8(page.asarray(), name=name)
    except tifffile.TiffFileError as error:
        raise NotAnImage(f"{name} is a damaged TIFF ({error}); export it again") from None


@runtime_checkable
class FieldReader(Protocol):
    """What :func:`locate_large` needs of an image: its size and a region as H×W×3 uint8 RGB.

    An OpenSlide-backed reader for whole-slide formats implements these two members
    (``read_region`` of level 0, converted to RGB).
    """

    name: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        ...

    def read_region(self, box: Box) -> np.ndarray: ...


@dataclass
class ArrayReader:
    """A :class:`FieldReader` over an array; a ``np.memmap`` keeps memory bounded for huge images."""

    array: np.ndarray
    name: str = "image"

    @property
    def size(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[0])

    def read_region(self, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        return as_rgb8(np.asarray(self.array[y0:y1, x0:x1]), name=self.name)


def open_reader(path: str | Path, config: LocateConfig | None = None) -> FieldReader:
    """Open an image for tiled reading: ``.npy`` and uncompressed TIFF are memory-mapped, others decoded."""
    config = config or LocateConfig()
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return ArrayReader(np.load(path, mmap_mode="r"), name=path.name)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            return ArrayReader(tifffile.memmap(path, mode="r"), name=path.name)
        except ValueError:
            pass  # compressed or tiled: decode it whole below, within max_pixels
    return ArrayReader(read_field(path, config), name=path.name)


# ---------------------------------------------------------------- locating


def stain_image(rgb: np.ndarray, config: LocateConfig) -> np.ndarray:
    """Per-pixel nucleus stain: high on blue-purple nuclei, low on red cells and background."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 2] - config.red_weight * rgb[..., 0] - (1.0 - config.red_weight) * rgb[..., 1]


def nucleus_labels(stain: np.ndarray, config: LocateConfig) -> tuple[np.ndarray, set[int]]:
    """Label the nuclei of a (work-resolution) stain image; also return the labels flagged ``merged``."""
    factor = config.work_factor
    work_px2 = config.px2(1.0) / factor**2
    stained = stain > config.stain_threshold
    stained = morphology.remove_small_objects(stained, max_size=max(1, int(config.min_fragment_um2 * work_px2)))
    stained = ndi.binary_fill_holes(stained)
    radius = max(1, round(config.px(config.lobe_join_um) / factor))
    joined = ndi.binary_closing(np.pad(stained, radius), morphology.disk(radius))[radius:-radius, radius:-radius]
    joined = ndi.binary_fill_holes(joined)
    labels = measure.label(joined)
    min_area = config.min_nucleus_um2 * work_px2
    max_area = config.max_nucleus_um2 * work_px2
    min_piece = config.min_split_piece_um2 * work_px2
    split_above = config.split_above_um2 * work_px2
    min_distance = max(1, round(config.px(config.split_min_distance_um) / factor))
    out = np.zeros_like(labels)
    merged: set[int] = set()
    next_label = 1
    for region in measure.regionprops(labels):
        if region.area < min_area:
            continue
        pieces = [region.image]
        if region.area > split_above:
            pieces = _split(region.image, min_distance=min_distance, min_piece=min_piece) or pieces
        r0, c0 = region.bbox[:2]
        for piece in pieces:
            rows, cols = np.nonzero(piece)
            out[rows + r0, cols + c0] = next_label
            if len(pieces) == 1 and region.area > max_area:
                merged.add(next_label)
            next_label += 1
    return out, merged


def _split(joined: np.ndarray, *, min_distance: int, min_piece: float) -> list[np.ndarray]:
    """Split touching nuclei by a watershed on the distance transform, one marker per distance peak at least
    ``min_distance`` apart; [] when some piece would not be a plausible nucleus on its own."""
    distance = ndi.distance_transform_edt(np.pad(joined, 1))[1:-1, 1:-1]
    peaks = feature.peak_local_max(distance, min_distance=min_distance, labels=joined.astype(int), exclude_border=False)
    if len(peaks) < 2:
        return []
    markers = np.zeros(joined.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    pieces_labels = segmentation.watershed(-distance, markers, mask=joined)
    pieces = [pieces_labels == k for k in range(1, markers.max() + 1)]
    if any(piece.sum() < min_piece for piece in pieces):
        return []
    return pieces


def locate_cells(rgb: np.ndarray, config: LocateConfig | None = None, *, field: str | None = None) -> list[FoundCell]:
    """Find the white cells of one field (H×W×3 RGB); an empty list when there is none."""
    config = config or LocateConfig()
    rgb = as_rgb8(rgb, name=field or "image")
    height, width = rgb.shape[:2]
    factor = config.work_factor
    stain = stain_image(rgb, config)
    if factor > 1:
        pad = ((0, -height % factor), (0, -width % factor))
        work = transform.downscale_local_mean(np.pad(stain, pad, mode="edge"), (factor, factor))
    else:
        work = stain
    labels, merged = nucleus_labels(work, config)
    cells = []
    for region in measure.regionprops(labels):
        nucleus_box, area = _refine_nucleus(stain, labels, region, config=config)
        box, touches = _grow_to_cell(nucleus_box, config=config, width=width, height=height)
        x0, y0, x1, y1 = nucleus_box
        cells.append(
            FoundCell(
                box=box,
                centre=((x0 + x1) / 2.0, (y0 + y1) / 2.0),
                nucleus_box=nucleus_box,
                area_px=area,
                touches_edge=touches,
                merged=region.label in merged,
                field=field,
            )
        )
    return cells


def _refine_nucleus(stain: np.ndarray, labels: np.ndarray, region, *, config: LocateConfig) -> tuple[Box, int]:
    """Measure the nucleus box at full resolution: stained pixels under the (slightly dilated) work mask."""
    factor = config.work_factor
    r0, c0, r1, c1 = region.bbox
    r0, c0 = max(0, r0 - 1), max(0, c0 - 1)
    r1, c1 = min(labels.shape[0], r1 + 1), min(labels.shape[1], c1 + 1)
    work_mask = ndi.binary_dilation(labels[r0:r1, c0:c1] == region.label)
    full_mask = np.repeat(np.repeat(work_mask, factor, axis=0), factor, axis=1)
    y0, x0 = r0 * factor, c0 * factor
    roi = stain[y0 : y0 + full_mask.shape[0], x0 : x0 + full_mask.shape[1]]
    stained = (roi > config.stain_threshold) & full_mask[: roi.shape[0], : roi.shape[1]]
    rows, cols = np.nonzero(stained)
    if len(rows) == 0:
        return (c0 * factor, r0 * factor, min(c1 * factor, stain.shape[1]), min(r1 * factor, stain.shape[0])), int(
            region.area * factor**2
        )
    return (x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1), len(rows)


def cell_box_from_nucleus(nucleus_box: Box, config: LocateConfig) -> tuple[float, float, float, float]:
    """The unclipped cell box (nucleus + cytoplasm) grown from a nucleus box."""
    x0, y0, x1, y1 = nucleus_box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    pad = config.px(config.cell_pad_um)
    longer = max(x1 - x0, y1 - y0)
    round_ = config.cell_roundness
    half_w = config.cell_scale * ((1 - round_) * (x1 - x0) + round_ * longer) / 2.0 + pad
    half_h = config.cell_scale * ((1 - round_) * (y1 - y0) + round_ * longer) / 2.0 + pad
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def _grow_to_cell(nucleus_box: Box, *, config: LocateConfig, width: int, height: int) -> tuple[Box, bool]:
    gx0, gy0, gx1, gy1 = cell_box_from_nucleus(nucleus_box, config)
    box = (max(0, round(gx0)), max(0, round(gy0)), min(width, round(gx1)), min(height, round(gy1)))
    touches = box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height
    return box, touches


# ---------------------------------------------------------------- crops


def crop_side(cell: FoundCell, config: LocateConfig) -> int:
    """Side in field pixels of the square crop that shows ``cell`` at the PBC tiles' scale."""
    x0, y0, x1, y1 = cell_box_from_nucleus(cell.nucleus_box, config)
    return max(config.min_field_px, math.ceil(max(x1 - x0, y1 - y0) / config.crop_fill))


def background_colour(region: np.ndarray) -> np.ndarray:
    """The colour of the plasma around the cells in ``region`` (RGB uint8): the median of its palest quarter
    of pixels, the part of a stained smear that took up the least dye."""
    pixels = region.reshape(-1, 3)
    brightness = pixels.astype(np.int32).sum(axis=1)
    palest = pixels[brightness >= np.quantile(brightness, 0.75)]
    return np.median(palest, axis=0).round().astype(np.uint8)


def crop_cell(source: np.ndarray | FieldReader, cell: FoundCell, config: LocateConfig | None = None) -> np.ndarray:
    """The ``patch_px`` square patch centred on ``cell``, the cell covering ``crop_fill`` of it like in PBC.

    Beyond the field edge the patch is the background colour of the part inside (``background_colour``):
    repeating the edge pixels would draw stripes of the cut cell's stain out to the patch's border.
    """
    config = config or LocateConfig()
    reader = source if isinstance(source, FieldReader) else ArrayReader(source)
    width, height = reader.size
    side = crop_side(cell, config)
    cx, cy = cell.centre
    x0, y0 = round(cx - side / 2.0), round(cy - side / 2.0)
    x1, y1 = x0 + side, y0 + side
    inside = (max(0, x0), max(0, y0), min(width, x1), min(height, y1))
    region = reader.read_region(inside)
    if region.shape[:2] == (side, side):
        patch = region
    else:
        patch = np.empty((side, side, 3), dtype=np.uint8)
        patch[:] = background_colour(region)
        top, left = inside[1] - y0, inside[0] - x0
        patch[top : top + region.shape[0], left : left + region.shape[1]] = region
    image = Image.fromarray(patch)
    if side != config.patch_px:
        image = image.resize((config.patch_px, config.patch_px), Image.Resampling.LANCZOS)
    return np.asarray(image)


# ---------------------------------------------------------------- large images


@dataclass(frozen=True)
class Tile:
    core: Box
    """The part of the image this tile answers for."""
    read: Box
    """The core plus the overlap: what is read and searched."""


def plan_tiles(width: int, height: int, config: LocateConfig) -> list[Tile]:
    """Tiles that partition the image into cores, each read with an overlap wider than a cell."""
    overlap = math.ceil(config.px(config.tile_overlap_um))
    step = max(1, config.tile_px)
    tiles = []
    for y in range(0, height, step):
        for x in range(0, width, step):
            core = (x, y, min(width, x + step), min(height, y + step))
            read = (
                max(0, x - overlap),
                max(0, y - overlap),
                min(width, core[2] + overlap),
                min(height, core[3] + overlap),
            )
            tiles.append(Tile(core=core, read=read))
    return tiles


def iter_large(
    reader: FieldReader, config: LocateConfig | None = None, progress: Callable[[int, int], None] | None = None
) -> Iterator[FoundCell]:
    """Yield the cells of a large image tile by tile; memory stays within a few tiles' worth."""
    config = config or LocateConfig()
    width, height = reader.size
    tiles = plan_tiles(width, height, config)
    for done, tile in enumerate(tiles, start=1):
        rx0, ry0, rx1, ry1 = tile.read
        region = reader.read_region(tile.read)
        for cell in locate_cells(region, config, field=reader.name):
            cx, cy = cell.centre[0] + rx0, cell.centre[1] + ry0
            if not (tile.core[0] <= cx < tile.core[2] and tile.core[1] <= cy < tile.core[3]):
                continue
            yield _shift(cell, dx=rx0, dy=ry0, width=width, height=height, config=config)
        del region
        if progress is not None:
            progress(done, len(tiles))


def locate_large(
    reader: FieldReader, config: LocateConfig | None = None, progress: Callable[[int, int], None] | None = None
) -> list[FoundCell]:
    """Find the cells of an image of any size through ``reader``, in overlapping tiles."""
    return list(iter_large(reader, config, progress))


def _shift(cell: FoundCell, *, dx: int, dy: int, width: int, height: int, config: LocateConfig) -> FoundCell:
    nx0, ny0, nx1, ny1 = cell.nucleus_box
    nucleus_box = (nx0 + dx, ny0 + dy, nx1 + dx, ny1 + dy)
    box, touches = _grow_to_cell(nucleus_box, config=config, width=width, height=height)
    return replace(
        cell,
        box=box,
        nucleus_box=nucleus_box,
        centre=(cell.centre[0] + dx, cell.centre[1] + dy),
        touches_edge=touches,
    )


__all__ = [
    "ArrayReader",
    "Box",
    "FieldError",
    "FieldReader",
    "FoundCell",
    "ImageTooLarge",
    "ImageTooSmall",
    "LocateConfig",
    "NotAnImage",
    "Tile",
    "UnsupportedImage",
    "as_rgb8",
    "background_colour",
    "crop_cell",
    "iter_large",
    "locate_cells",
    "locate_large",
    "open_reader",
    "plan_tiles",
    "read_field",
]
