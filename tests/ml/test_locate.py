"""The WBC locator on generated fields with exact boxes, bad input, tiling, and the shared data sets."""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.locate import (
    ArrayReader,
    ImageTooLarge,
    ImageTooSmall,
    LocateConfig,
    NotAnImage,
    UnsupportedImage,
    background_colour,
    crop_cell,
    locate_cells,
    locate_large,
    read_field,
)
from tests.support.database import SHARED_DATA

BACKGROUND = (232, 230, 222)
RED_CELL = (205, 150, 150)
CYTOPLASM = (212, 195, 218)
NUCLEUS = (95, 70, 200)
CONFIG = LocateConfig()


def blank(width: int = 640, height: int = 480) -> np.ndarray:
    field = np.empty((height, width, 3), dtype=np.uint8)
    field[:] = BACKGROUND
    return field


def disc(field: np.ndarray, cx: int, cy: int, r: int, colour: tuple[int, int, int]) -> None:
    yy, xx = np.ogrid[: field.shape[0], : field.shape[1]]
    field[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour


def wbc(field: np.ndarray, cx: int, cy: int, r: int) -> None:
    disc(field, cx, cy, int(r * 1.6), CYTOPLASM)
    disc(field, cx, cy, r, NUCLEUS)


def expected_cell_box(nucleus: tuple[int, int, int, int], width: int = 640, height: int = 480):
    """The documented grow rule, written out: half-side = scale * blended half-side + pad."""
    x0, y0, x1, y1 = nucleus
    w, h = x1 - x0, y1 - y0
    longer = max(w, h)
    pad = CONFIG.cell_pad_um / CONFIG.um_per_px
    half_w = CONFIG.cell_scale * (0.5 * w + 0.5 * longer) / 2 + pad
    half_h = CONFIG.cell_scale * (0.5 * h + 0.5 * longer) / 2 + pad
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (
        max(0, round(cx - half_w)),
        max(0, round(cy - half_h)),
        min(width, round(cx + half_w)),
        min(height, round(cy + half_h)),
    )


def test_importing_the_locator_does_not_import_torch():
    code = "import sys, ml.locate, bench.locate; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_discs_give_exact_nucleus_and_cell_boxes():
    field = blank()
    truths = [(150, 140, 40), (420, 300, 50), (560, 100, 30)]
    for cx, cy, r in truths:
        wbc(field, cx, cy, r)
    disc(field, 300, 80, 45, RED_CELL)  # red cells and platelets are not white cells
    disc(field, 300, 420, 8, NUCLEUS)
    cells = sorted(locate_cells(field, field="generated"), key=lambda c: c.centre)
    assert len(cells) == 3
    for cell, (cx, cy, r) in zip(cells, sorted(truths), strict=True):
        nucleus = (cx - r, cy - r, cx + r + 1, cy + r + 1)
        assert cell.nucleus_box == nucleus
        assert cell.box == expected_cell_box(nucleus)
        assert cell.centre == (cx + 0.5, cy + 0.5)
        assert cell.area_px == np.count_nonzero(
            (np.arange(-r, r + 1)[:, None] ** 2 + np.arange(-r, r + 1)[None, :] ** 2) <= r * r
        )
        assert cell.field == "generated"
        assert not cell.touches_edge and not cell.merged


def test_a_field_without_white_cells_gives_no_cell():
    field = blank()
    for x in range(60, 640, 110):
        disc(field, x, 240, 45, RED_CELL)
    assert locate_cells(field) == []


def test_lobes_of_one_nucleus_are_one_cell():
    field = blank()
    disc(field, 320, 240, 110, CYTOPLASM)
    lobes = [(270, 240), (320, 200), (370, 240), (320, 285)]  # gaps of ~0.8 µm between the lobes
    for cx, cy in lobes:
        disc(field, cx, cy, 20, NUCLEUS)
    cells = locate_cells(field)
    assert len(cells) == 1
    assert cells[0].nucleus_box == (250, 180, 391, 306)
    assert not cells[0].merged


def test_touching_cells_are_split():
    field = blank()
    disc(field, 240, 240, 80, NUCLEUS)  # two 72 µm² nuclei whose discs overlap by a few pixels
    disc(field, 395, 250, 80, NUCLEUS)
    cells = sorted(locate_cells(field), key=lambda c: c.centre)
    assert len(cells) == 2
    (lx0, ly0, _, ly1), (_, ry0, rx1, ry1) = cells[0].nucleus_box, cells[1].nucleus_box
    assert (lx0, ly0, ly1) == (160, 160, 321)
    assert (ry0, rx1, ry1) == (170, 476, 331)
    assert abs(cells[0].centre[0] - 240) < 10 and abs(cells[1].centre[0] - 395) < 10
    assert not any(cell.merged for cell in cells)


def test_a_clump_that_cannot_be_split_is_flagged_merged():
    field = blank()
    disc(field, 320, 240, 105, NUCLEUS)  # one blob larger than any single nucleus, no neck to cut
    cells = locate_cells(field)
    assert len(cells) == 1
    assert cells[0].merged


def test_a_cell_cut_by_the_field_edge_is_kept_and_flagged():
    field = blank()
    wbc(field, 20, 300, 40)
    wbc(field, 400, 200, 40)
    cells = sorted(locate_cells(field), key=lambda c: c.centre)
    assert [cell.touches_edge for cell in cells] == [True, False]
    assert cells[0].nucleus_box == (0, 260, 61, 341)
    assert cells[0].box[0] == 0


def test_crop_is_centred_and_scaled_like_a_pbc_tile():
    field = blank()
    wbc(field, 300, 200, 40)
    wbc(field, 600, 440, 30)  # near the corner: the patch is padded, still full size
    cells = sorted(locate_cells(field), key=lambda c: c.centre)
    for cell in cells:
        patch = crop_cell(field, cell)
        assert patch.shape == (CONFIG.patch_px, CONFIG.patch_px, 3) and patch.dtype == np.uint8
    patch = crop_cell(field, cells[0])
    nucleus = np.all(np.abs(patch.astype(int) - NUCLEUS) < 40, axis=2)
    rows, cols = np.nonzero(nucleus)
    assert abs((rows.min() + rows.max()) / 2 - 63.5) <= 1.5 and abs((cols.min() + cols.max()) / 2 - 63.5) <= 1.5
    cell_side = expected_cell_box(cells[0].nucleus_box)[2] - expected_cell_box(cells[0].nucleus_box)[0]
    nucleus_side_in_patch = cols.max() - cols.min() + 1
    assert nucleus_side_in_patch == pytest.approx(81 / cell_side * CONFIG.crop_fill * 128, abs=3)


def test_a_cell_cut_by_the_field_edge_is_padded_with_the_background_not_its_own_stain():
    field = blank()
    field[:, :40] = (180, 160, 200)  # a smear whose edge column is stained unlike the plasma around the cells
    wbc(field, 20, 240, 40)  # its nucleus reaches the left edge
    cell = next(c for c in locate_cells(field) if c.touches_edge)
    patch = crop_cell(field, cell).astype(int)

    beyond = patch[:, :8]  # left of the field's edge: nothing was imaged there
    assert np.abs(beyond - np.array(BACKGROUND)).max() <= 3  # the plasma's colour, no stripes of nucleus
    assert (np.abs(patch - np.array(NUCLEUS)).sum(axis=2) < 60).any()  # the cut cell itself is kept
    assert tuple(background_colour(field[200:280, 0:120])) == BACKGROUND


def test_large_image_in_tiles_finds_a_cell_on_a_tile_border_once():
    field = blank(1400, 1000)
    truths = [(512, 300, 45), (200, 200, 40), (1000, 700, 50), (700, 512, 40), (1300, 950, 35)]
    for cx, cy, r in truths:
        wbc(field, cx, cy, r)
    config = LocateConfig(tile_px=512)
    calls = []
    tiled = locate_large(
        ArrayReader(field, name="big"), config, progress=lambda done, total: calls.append((done, total))
    )
    whole = locate_cells(field, config, field="big")
    assert len(tiled) == len(truths)
    assert sorted(cell.nucleus_box for cell in tiled) == sorted(cell.nucleus_box for cell in whole)
    assert sorted(cell.box for cell in tiled) == sorted(cell.box for cell in whole)
    assert calls[-1] == (6, 6) and [done for done, _ in calls] == list(range(1, 7))


def peak_memory_of_tiled_run(path, width: int, height: int) -> tuple[int, int]:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(height, width, 3))
    array[:] = BACKGROUND
    for cx in range(200, width, 700):
        wbc(array[height - 300 :], cx, 150, 40)
    array.flush()
    del array
    reader = ArrayReader(np.load(path, mmap_mode="r"), name=path.name)
    tracemalloc.start()
    cells = locate_large(reader, LocateConfig(tile_px=512))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return len(cells), peak


def test_large_image_memory_does_not_grow_with_the_image(tmp_path):
    found_small, peak_small = peak_memory_of_tiled_run(tmp_path / "small.npy", 1500, 1500)
    found_big, peak_big = peak_memory_of_tiled_run(tmp_path / "big.npy", 4500, 3000)
    assert (found_small, found_big) == (2, 7)
    assert peak_big < 1.3 * peak_small  # six times the pixels, the same few tiles in memory
    assert peak_big < 128 * 2**20  # far under the 1 GB budget, whatever the image size


def encode(array: np.ndarray, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def test_read_field_decodes_jpeg_and_png_with_alpha():
    field = blank(200, 150)
    wbc(field, 100, 75, 30)
    assert read_field(encode(field, "PNG")).tolist() == field.tolist()
    rgba = np.dstack([field, np.full(field.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0  # a transparent pixel reads as white
    decoded = read_field(encode(rgba, "PNG"))
    assert decoded.shape == (150, 200, 3) and tuple(decoded[0, 0]) == (255, 255, 255)
    assert len(locate_cells(read_field(encode(field, "JPEG", quality=95)))) == 1


def test_read_field_converts_cmyk():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    pixel = read_field(buffer.getvalue())[10, 10]
    assert pixel[0] > 240 and pixel[1] < 15 and pixel[2] < 15


def test_read_field_converts_16_bit_and_float_tiff():
    import tifffile

    field = blank(100, 80)
    wbc(field, 50, 40, 20)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, field.astype(np.uint16) * 257, photometric="rgb")
    assert np.array_equal(read_field(buffer.getvalue()), field)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, field.astype(np.float32) / 255.0, photometric="rgb")
    assert np.abs(read_field(buffer.getvalue()).astype(int) - field).max() <= 1
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, field.astype(np.float32), photometric="rgb")  # 0..255 floats: ambiguous scale
    with pytest.raises(UnsupportedImage, match=r"\[0, 1\]"):
        read_field(buffer.getvalue())


def test_read_field_refuses_what_it_cannot_use():
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([blank(100, 80)] * 3), photometric="rgb")
    with pytest.raises(UnsupportedImage, match="3 pages"):
        read_field(buffer.getvalue())
    with pytest.raises(ImageTooSmall, match="too small"):
        read_field(encode(blank(20, 20), "PNG"))
    with pytest.raises(UnsupportedImage, match="colour"):
        read_field(encode(np.full((80, 100), 128, np.uint8), "PNG"))
    with pytest.raises(NotAnImage, match="not an image"):
        read_field(b"%PDF-1.4 not a picture", name="scan.pdf")


def test_read_field_refuses_a_decompression_bomb_before_decoding():
    png = encode(blank(64, 64), "PNG")
    header = struct.pack(">II", 100_000, 100_000) + png[24:29]  # IHDR: width, height, then 5 more bytes
    bomb = png[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + png[33:]
    with pytest.raises(ImageTooLarge, match="in tiles"):
        read_field(bomb)
    header = struct.pack(">II", 8000, 8000) + png[24:29]  # over max_pixels, under Pillow's own limit
    bomb = png[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + png[33:]
    with pytest.raises(ImageTooLarge, match="8000x8000"):
        read_field(bomb)


@pytest.mark.shared_data
def test_bccd_fields_meet_the_targets(tmp_path):
    data = SHARED_DATA / "bccd"
    if not (data / "wbc_boxes.json").is_file():
        pytest.skip("../shared/data/bccd is absent")
    out = tmp_path / "locate.json"
    command = [sys.executable, "-m", "cli", "bench", "locate", "--data", str(data), "--json", str(out)]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[2])
    report = json.loads(out.read_text())
    assert report["n_fields"] == 182
    assert report["recall"] >= 0.97 and report["f1"] >= 0.97
    assert report["crop_centre_in_true_box"] >= 0.95


@pytest.mark.shared_data
def test_pbc_tiles_hold_one_centred_cell():
    files = sorted((SHARED_DATA / "pbc").glob("*/*.jpg"))
    if not files:
        pytest.skip("../shared/data/pbc is absent")
    sample = random.Random(11).sample(files, 100)
    counts = []
    for path in sample:
        cells = locate_cells(read_field(path), field=path.name)
        counts.append(len(cells))
        for cell in cells:
            assert abs(cell.centre[0] - 64) < 25 and abs(cell.centre[1] - 64) < 25, path
    assert counts.count(1) >= 97, counts
