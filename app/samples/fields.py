"""Importing smear fields into samples: each field is located (``ml.locate``), its white cells cut out and
stored as cells with their provenance. All or nothing, like the tile import; services never commit data.

Two passes, as in ``app.cells.importer``: the first decodes every file and collects every problem, so a
refusal names them all and writes nothing; the second decodes each new field again, locates and cuts out its
cells onto a temporary file. Both run outside any transaction; then the fields (a display copy each) and their
cells are written. A field without any white cell is imported with 0 cells
and listed as such: an empty field is not an error.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import tempfile
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

from app.cells.images import PreparedImage, prepare_image

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
from app.db import end_read_transaction
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


@dataclass(frozen=True)
class _Located:
    """A new field located and its cells cut, outside any transaction; its rows are written after."""

    display: bytes
    scale: float
    cells: list[tuple[FoundCell, PreparedImage]]


def _locate_field(item: _Checked, config: LocateConfig, progress: Progress | None) -> _Located:
    try:
        rgb = _read(item.entry, config)
    except Exception as error:  # noqa: BLE001 - the first pass decoded it, so it changed since
        reason = getattr(error, "message", None) or f"{error.__class__.__name__}: {error}"
        raise ImportRefused([Rejection(item.entry.name, f"changed during the import: {reason}")]) from error
    if field_sha256(rgb) != item.sha256:
        raise ImportRefused([Rejection(item.entry.name, "changed during the import")])
    found = locate(rgb, config, name=item.entry.name, progress=progress)
    display, scale = display_copy(rgb)
    cells = [(cell, prepare_image(Image.fromarray(crop_cell(rgb, cell, config)))) for cell in found]
    return _Located(display, scale, cells)


def _write_field(
    *, session: Session, item: _Checked, located: _Located, sample: Sample, batch: ImportBatch, report: SampleImport
) -> None:
    field_row = Field(
        sample_id=sample.id,
        source_name=item.entry.name[-512:],
        sha256=item.sha256,
        width=item.width,
        height=item.height,
        display_jpeg=located.display,
        display_scale=located.scale,
        import_id=batch.id,
        cell_count=len(located.cells),
    )
    session.add(field_row)
    session.flush()
    cells = []
    for index, (cell, prepared) in enumerate(located.cells):
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
    report.touching_edge += sum(cell.touches_edge for cell, _ in located.cells)
    report.merged += sum(cell.merged for cell, _ in located.cells)
    if not located.cells:
        report.empty_fields.append(item.entry.name)


def _known_fields(session: Session, identifiers: list[str]) -> dict[str, set[str]]:
    """The field hashes each existing sample of ``identifiers`` holds already."""
    known: dict[str, set[str]] = {name: set() for name in identifiers}
    rows = session.execute(
        select(Sample.identifier, Field.sha256)
        .join(Field, Field.sample_id == Sample.id)
        .where(Sample.identifier.in_(identifiers))
    )
    for identifier, sha256 in rows:
        known[identifier].add(sha256)
    return known


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
    """Find, cut and write the cells of the fields ``found`` (files, refusals, skipped notes), all or nothing.

    Checking, locating and cutting, nearly all of the time, run outside any transaction (a transaction that has
    only read is ended first: ``app.db.end_read_transaction``), so that on SQLite the labellers are not kept
    waiting for its write lock; the rows are written after, in the caller's transaction."""
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
    end_read_transaction(session)
    checked, problems = _check(assigned, configs, progress, total=len(assigned) * 2)
    rejections += problems
    if not entries and not rejections:
        rejections.append(Rejection(source, "no images found"))
    if rejections:
        raise ImportRefused(rejections)

    known = _known_fields(session, identifiers)
    end_read_transaction(session)
    duplicates = dict.fromkeys(identifiers, 0)
    fresh: list[_Checked] = []
    for item in checked:
        if item.sha256 in known[item.sample]:
            duplicates[item.sample] += 1
        else:
            known[item.sample].add(item.sha256)
            fresh.append(item)
    steps = {id(item): _steps(item, configs[item.sample]) for item in fresh}
    total = len(checked) + sum(steps.values())
    done = len(checked)
    with tempfile.TemporaryFile() as spool:
        for item in fresh:

            def tile_progress(tiles_done: int, _tiles: int, base: int = done) -> None:
                if progress:
                    progress(base + tiles_done, total)

            pickle.dump(_locate_field(item, configs[item.sample], tile_progress), spool, pickle.HIGHEST_PROTOCOL)
            done += steps[id(item)]
            if progress:
                progress(done, total)
        spool.seek(0)
        # Nothing is written before every file passed the check and every field was located.
        if sample_pixel_sizes(session=session, identifiers=identifiers, um_per_px=um_per_px) != pixel_sizes:
            raise Conflict("another import created one of these samples meanwhile; run the import again")
        samples = {
            name: get_or_create_sample(
                session=session, identifier=name, um_per_px=um_per_px, note=note, user_id=user_id
            )
            for name in identifiers
        }
        reports = {
            name: SampleImport(identifier=name, sample_id=row.id, created=created, duplicates=duplicates[name])
            for name, (row, created) in samples.items()
        }
        known_now = _known_fields(session, identifiers)  # another import may have added some meanwhile
        batch = ImportBatch(user_id=user_id, source=source[-512:], labelled=False, imported=0, duplicates=0)
        session.add(batch)
        session.flush()
        try:
            for item in fresh:
                located: _Located = pickle.load(spool)
                if item.sha256 in known_now[item.sample]:
                    reports[item.sample].duplicates += 1
                    continue
                _write_field(
                    session=session,
                    item=item,
                    located=located,
                    sample=samples[item.sample][0],
                    batch=batch,
                    report=reports[item.sample],
                )
        except IntegrityError as error:
            raise Conflict(
                "another import added some of the same fields at the same time; run the import again"
            ) from error
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
