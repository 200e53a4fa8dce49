"""Importing smear fields into samples: each field is located (``ml.locate``), its white cells cut out and
stored as cells with their provenance. All or nothing, like the tile import; services never commit.

Two passes, as in ``app.cells.importer``: the first decodes every file and collects every problem, so a
refusal names them all and writes nothing; the second decodes each field again, locates its cells, and
writes the field (a display copy) and its cells. A field without any white cell is imported with 0 cells
and listed as such: an empty field is not an error.
"""

from __future__ import annotations

import hashlib
import random
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.cells.images import prepare_image

# The tile import's file walking: links, zip escapes, encrypted entries, names that are not UTF-8,
# notes beside the images and the decompression-bomb budget are handled the same way for fields.
from app.cells.sources import (
    Entry,
    Found,
    ImportRefused,
    Rejection,
    check_pixel_budget,
    folder_entries,
    open_zip,
    printable_name,
    zip_entries,
)
from app.errors import Conflict, InvalidInput
from app.models import Cell, Field, ImportBatch, Sample
from app.samples.service import check_identifier, get_or_create_sample, sample_pixel_sizes
from ml.locate import (
    ArrayReader,
    FieldError,
    FoundCell,
    LocateConfig,
    crop_cell,
    locate_cells,
    locate_large,
    plan_tiles,
    read_field,
)

DISPLAY_MAX_SIDE = 1600
DISPLAY_JPEG_QUALITY = 85
Progress = Callable[[int, int], None]
NOT_IN_A_SAMPLE = (
    "not inside a sample folder: put each sample's fields in a folder named after the sample, "
    "or name the sample (--sample, or the form's Sample field)"
)


@dataclass
class SampleImport:
    identifier: str
    sample_id: int
    created: bool
    fields: int = 0
    cells: int = 0
    duplicates: int = 0
    touching_edge: int = 0
    merged: int = 0
    empty_fields: list[str] = field(default_factory=list)


@dataclass
class FieldImportSummary:
    samples: list[SampleImport]
    fields: int
    cells: int
    duplicates: int
    empty_fields: list[str]
    import_id: int | None
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The summary as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class _Checked:
    entry: Entry
    sample: str
    sha256: str
    width: int
    height: int


def field_sha256(rgb: np.ndarray) -> str:
    """SHA-256 of a field's decoded RGB pixels and size: the same field in any lossless encoding matches."""
    digest = hashlib.sha256(f"{rgb.shape[1]}x{rgb.shape[0]}\n".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def _strip_wrapper(entries: list[Entry]) -> list[Entry]:
    """Drop folders that wrap every sample folder (``export/slideA/f.jpg`` → ``slideA/f.jpg``)."""
    while entries and all(len(e.parts) >= 3 and e.parts[0] == entries[0].parts[0] for e in entries):
        entries = [Entry(e.name, e.parts[1:], e.size, e.open) for e in entries]
    return entries


def _assign_samples(entries: list[Entry], sample: str | None) -> tuple[list[tuple[Entry, str]], list[Rejection]]:
    """Each entry with its sample: ``sample`` for all, else the top-level folder it is in."""
    if sample is not None:
        return [(entry, sample) for entry in entries], []
    assigned, rejections = [], []
    for entry in _strip_wrapper(entries):
        if len(entry.parts) < 2:
            rejections.append(Rejection(entry.name, NOT_IN_A_SAMPLE))
            continue
        try:
            assigned.append((entry, check_identifier(entry.parts[0])))
        except InvalidInput as error:
            rejections.append(Rejection(entry.name, error.message))
    return assigned, rejections


def _read(entry: Entry, config: LocateConfig) -> np.ndarray:
    with entry.open() as fp:
        data = fp.read()
    if not data:
        raise FieldError("empty file (0 bytes)")
    return read_field(data, config, name=entry.name)


def _check(
    assigned: list[tuple[Entry, str]], configs: dict[str, LocateConfig], progress: Progress | None, total: int
) -> tuple[list[_Checked], list[Rejection]]:
    checked, rejections = [], []
    for done, (entry, sample) in enumerate(assigned, start=1):
        try:
            rgb = _read(entry, configs[sample])
        except FieldError as error:
            rejections.append(Rejection(entry.name, error.message))
        except OSError as error:
            rejections.append(Rejection(entry.name, f"cannot read the file: {error}"))
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as error:
            rejections.append(Rejection(entry.name, f"cannot read the zip entry: {error}"))
        except Exception as error:  # noqa: BLE001 - an odd image must be a rejection, never a crash
            rejections.append(Rejection(entry.name, f"cannot decode ({error.__class__.__name__}: {error})"))
        else:
            checked.append(_Checked(entry, sample, field_sha256(rgb), rgb.shape[1], rgb.shape[0]))
            del rgb
        if progress:
            progress(done, total)
    return checked, rejections


def display_copy(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> tuple[bytes, float]:
    """A JPEG of the field at most ``max_side`` px on its long side, and its scale (display px per field px)."""
    image = Image.fromarray(rgb)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=DISPLAY_JPEG_QUALITY)
    return buffer.getvalue(), scale


def _steps(item: _Checked, config: LocateConfig) -> int:
    """Progress steps of locating one field: its tiles when it is large, else one."""
    if max(item.width, item.height) <= config.tile_px:
        return 1
    return len(plan_tiles(item.width, item.height, config))


def locate(rgb: np.ndarray, config: LocateConfig, *, name: str, progress: Progress | None = None) -> list[FoundCell]:
    """The cells of a decoded field; a large one goes in overlapping tiles (bounded memory, tile progress)."""
    if max(rgb.shape[:2]) <= config.tile_px:
        return locate_cells(rgb, config, field=name)
    return locate_large(ArrayReader(rgb, name=name), config, progress)


def _cell_sha256(field_row: Field, index: int, found: FoundCell, pixels_sha256: str) -> str:
    # Two cells may have the same pixels (identical nuclei on a clean background, the same field in two
    # samples): a located cell is identified by where it was found, not by its pixels alone.
    key = f"field {field_row.id} cell {index} box {found.box}\n{pixels_sha256}"
    return hashlib.sha256(key.encode()).hexdigest()


def _write_field(
    *,
    session: Session,
    item: _Checked,
    sample: Sample,
    config: LocateConfig,
    batch: ImportBatch,
    report: SampleImport,
    progress: Progress | None,
) -> None:
    try:
        rgb = _read(item.entry, config)
    except Exception as error:  # noqa: BLE001 - the first pass decoded it, so it changed since
        reason = getattr(error, "message", None) or f"{error.__class__.__name__}: {error}"
        raise ImportRefused([Rejection(item.entry.name, f"changed during the import: {reason}")]) from error
    if field_sha256(rgb) != item.sha256:
        raise ImportRefused([Rejection(item.entry.name, "changed during the import")])
    found = locate(rgb, config, name=item.entry.name, progress=progress)
    display, scale = display_copy(rgb)
    field_row = Field(
        sample_id=sample.id,
        source_name=item.entry.name[-512:],
        sha256=item.sha256,
        width=item.width,
        height=item.height,
        display_jpeg=display,
        display_scale=scale,
        import_id=batch.id,
        cell_count=len(found),
    )
    session.add(field_row)
    session.flush()
    cells = []
    for index, cell in enumerate(found):
        prepared = prepare_image(Image.fromarray(crop_cell(rgb, cell, config)))
        x0, y0, x1, y1 = cell.box
        cells.append(
            Cell(
                sha256=_cell_sha256(field_row, index, cell, prepared.sha256),
                display_png=prepared.display_png,
                display_size=prepared.display_size,
                model_input=prepared.model_input,
                source_name=f"{item.entry.name}#{x0},{y0},{x1},{y1}"[-512:],
                slide=sample.identifier[:128],
                import_id=batch.id,
                random_key=random.random(),
                sample_id=sample.id,
                field_id=field_row.id,
                box_x0=x0,
                box_y0=y0,
                box_x1=x1,
                box_y1=y1,
                centre_x=float(cell.centre[0]),
                centre_y=float(cell.centre[1]),
                touches_edge=cell.touches_edge,
                merged=cell.merged,
            )
        )
    session.add_all(cells)
    session.flush()
    for row in (field_row, *cells):  # keep the session small on many fields
        session.expunge(row)
    report.fields += 1
    report.cells += len(cells)
    report.touching_edge += sum(cell.touches_edge for cell in found)
    report.merged += sum(cell.merged for cell in found)
    if not found:
        report.empty_fields.append(item.entry.name)


def _run_import(
    *,
    session: Session,
    found: Found,
    sample: str | None,
    um_per_px: float | None,
    note: str | None,
    user_id: int | None,
    source: str,
    progress: Progress | None,
) -> FieldImportSummary:
    """Find, cut and write the cells of the fields ``found`` (files, refusals, skipped notes), all or nothing."""
    entries, rejections, skipped = found
    if sample is not None:
        sample = check_identifier(sample)
    assigned, problems = _assign_samples(entries, sample)
    rejections = rejections + problems
    identifiers = list(dict.fromkeys(name for _, name in assigned))
    pixel_sizes = sample_pixel_sizes(session=session, identifiers=identifiers, um_per_px=um_per_px)
    configs = {name: LocateConfig(um_per_px=size) for name, size in pixel_sizes.items()}
    max_pixels = LocateConfig().max_pixels
    check_pixel_budget([entry for entry, _ in assigned], source=source, max_pixels=max_pixels)
    checked, problems = _check(assigned, configs, progress, total=len(assigned) * 2)
    rejections += problems
    if not entries and not rejections:
        rejections.append(Rejection(source, "no images found"))
    if rejections:
        raise ImportRefused(rejections)

    # Nothing is written before every file passed the check.
    samples = {
        name: get_or_create_sample(session=session, identifier=name, um_per_px=um_per_px, note=note, user_id=user_id)
        for name in identifiers
    }
    reports = {
        name: SampleImport(identifier=name, sample_id=row.id, created=created)
        for name, (row, created) in samples.items()
    }
    fresh: list[_Checked] = []
    for name, (row, _) in samples.items():
        known = set(session.scalars(select(Field.sha256).where(Field.sample_id == row.id)))
        for item in (item for item in checked if item.sample == name):
            if item.sha256 in known:
                reports[name].duplicates += 1
            else:
                known.add(item.sha256)
                fresh.append(item)
    steps = {id(item): _steps(item, configs[item.sample]) for item in fresh}
    total = len(checked) + sum(steps.values())
    done = len(checked)

    batch = ImportBatch(user_id=user_id, source=source[-512:], labelled=False, imported=0, duplicates=0)
    session.add(batch)
    session.flush()
    try:
        for item in fresh:
            row, _ = samples[item.sample]

            def tile_progress(tiles_done: int, _tiles: int, base: int = done) -> None:
                if progress:
                    progress(base + tiles_done, total)

            _write_field(
                session=session,
                item=item,
                sample=row,
                config=configs[item.sample],
                batch=batch,
                report=reports[item.sample],
                progress=tile_progress,
            )
            done += steps[id(item)]
            if progress:
                progress(done, total)
    except IntegrityError as error:
        raise Conflict("another import added some of the same fields at the same time; run the import again") from error
    listed = list(reports.values())
    batch.imported = sum(r.cells for r in listed)
    batch.duplicates = sum(r.duplicates for r in listed)
    session.flush()
    if progress:
        progress(total, total)
    return FieldImportSummary(
        samples=listed,
        fields=sum(r.fields for r in listed),
        cells=batch.imported,
        duplicates=batch.duplicates,
        empty_fields=[name for r in listed for name in r.empty_fields],
        import_id=batch.id,
        skipped=skipped,
    )


def import_field_folder(
    *,
    session: Session,
    path: Path,
    sample: str | None,
    user_id: int | None,
    um_per_px: float | None = None,
    note: str | None = None,
    progress: Progress | None = None,
) -> FieldImportSummary:
    """Import the smear fields below ``path`` into ``sample`` (else one sample per top-level folder)."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInput(f"{printable_name(str(path))}: not a folder")
    return _run_import(
        session=session,
        found=folder_entries(path),
        sample=sample,
        um_per_px=um_per_px,
        note=note,
        user_id=user_id,
        source=printable_name(str(path.resolve())),
        progress=progress,
    )


def import_field_zip(
    *,
    session: Session,
    file: BinaryIO | Path,
    sample: str | None,
    user_id: int | None,
    um_per_px: float | None = None,
    note: str | None = None,
    max_bytes: int | None = None,
    progress: Progress | None = None,
    name: str | None = None,
) -> FieldImportSummary:
    """Import the smear fields in a .zip into ``sample`` (else one sample per top-level folder)."""
    archive, name = open_zip(file, max_bytes=max_bytes, name=name)  # the tile import's checks: size, names, bombs
    with archive:
        return _run_import(
            session=session,
            found=zip_entries(archive),
            sample=sample,
            um_per_px=um_per_px,
            note=note,
            user_id=user_id,
            source=name,
            progress=progress,
        )
