"""Importing cell images from a folder or a .zip, all or nothing. Services never commit data.

An import runs in two passes. The first opens and fully decodes every file and collects
every problem, so a refusal names them all and writes nothing (app.cells.sources). The second decodes the
new files again (only the hashes are kept in between, so 10,000 images need little memory) and prepares
their display and model copies onto a temporary file. Both run outside any transaction (a transaction that
has only read is ended first: ``app.db.end_read_transaction``); then one short transaction inserts the cells.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.cells.images import PreparedImage, open_image, prepare_image
from app.cells.sources import (
    Candidate,
    Found,
    ImportRefused,
    Progress,
    Rejection,
    check_pixel_budget,
    folder_entries,
    looks_labelled,
    open_zip,
    printable_name,
    scan_entries,
    strip_wrapper,
    zip_entries,
)
from app.db import end_read_transaction
from app.errors import Conflict, InvalidInput
from app.models import Cell, CellClass, ImportBatch, Label, User
from app.settings import get_settings
from app.statuses import LabelSource

BATCH_SIZE = 500
_PREPARE_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class ImportSummary:
    imported: int
    duplicates: int
    labelled: int
    import_id: int | None
    skipped: list[str] = field(default_factory=list)  # notes such as README.md, not images


def _batched(items: Sequence[Candidate], size: int) -> Iterator[list[Candidate]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _known_hashes(session: Session, hashes: Sequence[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(hashes), BATCH_SIZE):
        chunk = hashes[start : start + BATCH_SIZE]
        known.update(session.scalars(select(Cell.sha256).where(Cell.sha256.in_(chunk))))
    return known


def _class_names(session: Session) -> list[str]:
    """Keys of the classes in use: a labelled import's folder names (retired classes refused)."""
    return list(
        session.scalars(select(CellClass.name).where(CellClass.retired_at.is_(None)).order_by(CellClass.position))
    )


def _check_user(session: Session, user_id: int | None, labelled: bool) -> None:
    if user_id is None:
        if labelled:
            raise InvalidInput("a labelled import needs a user to attribute the labels to")
        return
    if session.get(User, user_id) is None:
        raise InvalidInput(f"no user with id {user_id}")


def _prepare(candidate: Candidate, *, max_pixels: int, min_side: int) -> PreparedImage:
    """Decode ``candidate`` again and derive its display and model copies; it must not have changed."""
    try:
        with candidate.open() as fp:
            image = open_image(fp, max_pixels=max_pixels, min_side=min_side)
            prepared = prepare_image(image)
            image.close()
    except Exception as exc:  # noqa: BLE001 - the first pass decoded it, so it changed since
        reason = getattr(exc, "reason", None) or f"cannot read the file ({exc.__class__.__name__}: {exc})"
        raise ImportRefused([Rejection(candidate.source_name, f"changed during the import: {reason}")]) from exc
    if prepared.sha256 != candidate.sha256:
        raise ImportRefused([Rejection(candidate.source_name, "changed during the import")])
    return prepared


def _prepare_all(
    fresh: list[Candidate],
    spool: BinaryIO,
    *,
    max_pixels: int,
    min_side: int,
    progress: Progress | None,
    done: int,
    total: int,
) -> None:
    """Derive every fresh file's display and model copies onto ``spool``, in order (pickled), so that the
    transaction that inserts them does no decoding; only the hashes stay in memory."""
    prepare = partial(_prepare, max_pixels=max_pixels, min_side=min_side)
    # Pillow releases the GIL while decoding, resizing and compressing, so threads use every core.
    with ThreadPoolExecutor(max_workers=_PREPARE_THREADS) as workers:
        for chunk in _batched(fresh, BATCH_SIZE):
            for prepared in workers.map(prepare, chunk):
                pickle.dump(prepared, spool, protocol=pickle.HIGHEST_PROTOCOL)
            done += len(chunk)
            if progress:
                progress(done, total)
    spool.seek(0)


def _recheck(session: Session, *, fresh: list[Candidate], labelled: bool, user_id: int | None) -> set[str]:
    """What may have changed since the files were checked, outside the transaction: the importing user, the
    classes the labels name; and the hashes another import has added meanwhile (returned: they are skipped)."""
    _check_user(session, user_id, labelled)
    if labelled:
        gone = {c.class_name for c in fresh} - set(_class_names(session))
        if gone:
            raise Conflict(
                f"class {', '.join(sorted(str(name) for name in gone))} was retired or merged during the import; "
                "run the import again"
            )
    return _known_hashes(session, [c.sha256 for c in fresh])


def _write(
    *,
    session: Session,
    fresh: list[Candidate],
    spool: BinaryIO,
    duplicates: int,
    labelled: bool,
    user_id: int | None,
    source: str,
    skipped: list[str],
    progress: Progress | None,
    total: int,
) -> ImportSummary:
    """Insert the prepared cells (and their labels) in batches; the caller's commit makes them visible at once."""
    known_now = _recheck(session, fresh=fresh, labelled=labelled, user_id=user_id)
    batch = ImportBatch(user_id=user_id, source=source[-512:], labelled=labelled, imported=0, duplicates=0)
    session.add(batch)
    session.flush()

    imported = label_count = 0
    try:
        for chunk in _batched(fresh, BATCH_SIZE):
            pairs = [(candidate, pickle.load(spool)) for candidate in chunk]
            pairs = [(c, prepared) for c, prepared in pairs if prepared.sha256 not in known_now]
            cells = [
                Cell(
                    sha256=prepared.sha256,
                    display_png=prepared.display_png,
                    display_size=prepared.display_size,
                    model_input=prepared.model_input,
                    source_name=candidate.source_name[-512:],
                    import_id=batch.id,
                    random_key=random.random(),
                )
                for candidate, prepared in pairs
            ]
            session.add_all(cells)
            session.flush()
            labels: list[Label] = []
            if labelled:
                labels = [
                    Label(cell_id=cell.id, user_id=user_id, value=candidate.class_name, source=LabelSource.IMPORT)
                    for cell, (candidate, _) in zip(cells, pairs, strict=True)
                ]
                session.add_all(labels)
                session.flush()
                for cell, label in zip(cells, labels, strict=True):
                    cell.current_label_id = label.id
                session.flush()
                label_count += len(labels)
            for row in (*cells, *labels):  # keep the session small on 10,000 images
                session.expunge(row)
            imported += len(cells)
    except IntegrityError as exc:
        raise Conflict("another import added some of the same cells at the same time; run the import again") from exc

    batch.imported = imported
    batch.duplicates = duplicates + len(fresh) - imported
    session.flush()
    if progress:
        progress(total, total)
    return ImportSummary(
        imported=imported,
        duplicates=batch.duplicates,
        labelled=label_count,
        import_id=batch.id,
        skipped=skipped,
    )


def _run_import(
    *,
    session: Session,
    found: Found,
    labelled: bool | None,
    user_id: int | None,
    source: str,
    progress: Progress | None,
) -> ImportSummary:
    """Check every file ``found`` (refusing them all, or none), prepare the new ones, then write the cells.

    The checking and preparing, nearly all of an import's time, run outside any transaction
    (``end_read_transaction``), so that on SQLite the labellers are not kept waiting for its write lock;
    the insert is one short transaction, the caller's, committed whole or not at all."""
    entries, rejections, skipped = found
    settings = get_settings()
    max_pixels, min_side = settings.max_image_pixels, settings.min_image_side
    class_names = _class_names(session)
    entries = strip_wrapper(entries, {name.lower(): name for name in class_names})
    if labelled is None:
        labelled = looks_labelled(entries, class_names)
    _check_user(session, user_id, labelled)
    check_pixel_budget(entries, source=source, max_pixels=max_pixels)
    end_read_transaction(session)
    total = 2 * len(entries)  # each file is read twice: checked, then prepared
    candidates, problems = scan_entries(
        entries,
        labelled=labelled,
        class_names=class_names,
        max_pixels=max_pixels,
        min_side=min_side,
        progress=progress,
        total_steps=total,
    )
    rejections = rejections + problems
    if not entries and not rejections:
        rejections.append(Rejection(source, "no images found"))
    if rejections:
        raise ImportRefused(rejections)
    known = _known_hashes(session, [c.sha256 for c in candidates])
    end_read_transaction(session)
    fresh: list[Candidate] = []
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.sha256 not in known and candidate.sha256 not in seen:
            seen.add(candidate.sha256)
            fresh.append(candidate)
    duplicates = len(candidates) - len(fresh)
    with tempfile.TemporaryFile() as spool:
        _prepare_all(
            fresh,
            spool,
            max_pixels=max_pixels,
            min_side=min_side,
            progress=progress,
            done=len(entries) + duplicates,  # duplicates need no second pass
            total=total,
        )
        return _write(
            session=session,
            fresh=fresh,
            spool=spool,
            duplicates=duplicates,
            labelled=labelled,
            user_id=user_id,
            source=source,
            skipped=skipped,
            progress=progress,
            total=total,
        )


def import_folder(
    *,
    session: Session,
    path: Path,
    labelled: bool,
    user_id: int | None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import every image below ``path`` (class sub-folders as labels when ``labelled``), all or nothing."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInput(f"{printable_name(str(path))}: not a folder")
    return _run_import(
        session=session,
        found=folder_entries(path),
        labelled=labelled,
        user_id=user_id,
        source=printable_name(str(path.resolve())),
        progress=progress,
    )


def import_zip(
    *,
    session: Session,
    file: BinaryIO | Path,
    labelled: bool | None,
    user_id: int | None,
    max_bytes: int | None = None,
    progress: Progress | None = None,
    name: str | None = None,
) -> ImportSummary:
    """Import the images in a .zip, all or nothing; ``labelled=None`` detects class sub-folders."""
    archive, name = open_zip(file, max_bytes=max_bytes, name=name)
    with archive:
        return _run_import(
            session=session,
            found=zip_entries(archive),
            labelled=labelled,
            user_id=user_id,
            source=name,
            progress=progress,
        )
