"""Samples: their fields and located cells, and the differential count. Services never commit."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.export.service import csv_safe
from app.models import UNSURE, Cell, CellClass, Field, Label, ModelVersion, Prediction, Sample
from app.samples.schemas import (
    CellBox,
    CellFieldOut,
    ClassCount,
    CountBlock,
    DifferentialOut,
    FieldOut,
    SampleDetail,
    SampleOut,
)
from ml.locate import LocateConfig

DEFAULT_UM_PER_PX = LocateConfig().um_per_px
MAX_UM_PER_PX = 100.0


def check_identifier(identifier: str) -> str:
    """``identifier`` trimmed, or ``InvalidInput`` saying what a sample identifier may be."""
    text = identifier.strip()
    if not text or len(text) > 128:
        raise InvalidInput(f"a sample identifier has 1 to 128 characters, not {len(text)}: {text[:40]!r}")
    if any(not ch.isprintable() for ch in text):
        raise InvalidInput(f"a sample identifier must be printable text (no control characters): {text[:40]!r}")
    return text


def check_um_per_px(um_per_px: float) -> float:
    """``um_per_px`` if it is a plausible pixel size, else ``InvalidInput``."""
    if not math.isfinite(um_per_px) or not 0 < um_per_px <= MAX_UM_PER_PX:
        raise InvalidInput(
            f"pixel size {um_per_px} µm/px is not plausible: give a number above 0 and at most {MAX_UM_PER_PX:g} "
            f"(BCCD-like fields at 100x oil: about {DEFAULT_UM_PER_PX})"
        )
    return um_per_px


def sample_pixel_sizes(*, session: Session, identifiers: Sequence[str], um_per_px: float | None) -> dict[str, float]:
    """The pixel size each sample's fields are located at: the sample's own, or ``um_per_px`` (or the default)
    for a new one. Refuses a ``um_per_px`` that contradicts an existing sample's."""
    if um_per_px is not None:
        check_um_per_px(um_per_px)
    existing = {
        row.identifier: row.um_per_px
        for row in session.scalars(select(Sample).where(Sample.identifier.in_(list(identifiers))))
    }
    for identifier, size in existing.items():
        if um_per_px is not None and not math.isclose(size, um_per_px):
            raise InvalidInput(
                f"sample {identifier!r} exists with {size:g} µm/px, not {um_per_px:g}: leave the pixel size out "
                "to add fields to it, or import into a new sample"
            )
    return {name: existing.get(name, um_per_px or DEFAULT_UM_PER_PX) for name in identifiers}


def get_or_create_sample(
    *, session: Session, identifier: str, um_per_px: float | None, note: str | None, user_id: int | None
) -> tuple[Sample, bool]:
    """The sample named ``identifier``, created if new; and whether it was created."""
    identifier = check_identifier(identifier)
    sample = session.scalar(select(Sample).where(Sample.identifier == identifier))
    if sample is not None:
        return sample, False
    sample = Sample(
        identifier=identifier,
        note=note or None,
        um_per_px=check_um_per_px(um_per_px) if um_per_px is not None else DEFAULT_UM_PER_PX,
        created_by=user_id,
    )
    try:
        with session.begin_nested():
            session.add(sample)
    except IntegrityError as error:
        raise Conflict(
            f"another import created sample {identifier!r} at the same time; run the import again"
        ) from error
    return sample, True


def attach_import(*, session: Session, import_id: int, identifier: str, user_id: int | None) -> tuple[Sample, int]:
    """Put the cells of tile import ``import_id`` into the sample ``identifier`` (created if new)."""
    sample, _ = get_or_create_sample(session=session, identifier=identifier, um_per_px=None, note=None, user_id=user_id)
    moved = session.execute(
        update(Cell).where(Cell.import_id == import_id).values(sample_id=sample.id, slide=sample.identifier[:128])
    ).rowcount
    return sample, moved


def get_sample(*, session: Session, sample_id: int) -> Sample:
    sample = session.get(Sample, sample_id)
    if sample is None:
        raise NotFound(f"no sample with id {sample_id}")
    return sample


def _sample_out(sample: Sample, fields: int, cells: int) -> dict:
    return {
        "id": sample.id,
        "identifier": sample.identifier,
        "note": sample.note,
        "um_per_px": sample.um_per_px,
        "created_at": sample.created_at,
        "fields": fields,
        "cells": cells,
    }


def list_samples(*, session: Session) -> list[SampleOut]:
    """Every sample with its number of fields and cells, newest first."""
    field_counts = dict(session.execute(select(Field.sample_id, func.count(Field.id)).group_by(Field.sample_id)).all())
    cell_counts = dict(
        session.execute(
            select(Cell.sample_id, func.count(Cell.id)).where(Cell.sample_id.is_not(None)).group_by(Cell.sample_id)
        ).all()
    )
    samples = session.scalars(select(Sample).order_by(Sample.id.desc()))
    return [SampleOut(**_sample_out(s, field_counts.get(s.id, 0), cell_counts.get(s.id, 0))) for s in samples]


def field_image_url(field_id: int, root: str = "") -> str:
    """The field image's URL under ``root``, the path the app is served under (a proxy's prefix)."""
    return f"{root}/api/v1/fields/{field_id}/image"


def _cell_box(row: Cell, label: str | None) -> CellBox:
    return CellBox(
        cell_id=row.id,
        box=(row.box_x0, row.box_y0, row.box_x1, row.box_y1),
        centre=(row.centre_x, row.centre_y),
        touches_edge=bool(row.touches_edge),
        merged=bool(row.merged),
        label=label,
    )


def sample_detail(*, session: Session, sample_id: int, root: str = "") -> SampleDetail:
    """The sample with each of its fields and every located cell's box."""
    sample = get_sample(session=session, sample_id=sample_id)
    fields = list(session.scalars(select(Field).where(Field.sample_id == sample_id).order_by(Field.id)))
    rows = session.execute(
        select(Cell, Label.value)
        .outerjoin(Label, Label.id == Cell.current_label_id)
        .where(Cell.sample_id == sample_id, Cell.field_id.is_not(None))
        .order_by(Cell.id)
    ).all()
    boxes: dict[int, list[CellBox]] = {}
    for cell, label in rows:
        boxes.setdefault(cell.field_id, []).append(_cell_box(cell, label))
    cells = session.scalar(select(func.count(Cell.id)).where(Cell.sample_id == sample_id)) or 0
    return SampleDetail(
        **_sample_out(sample, len(fields), cells),
        field_list=[
            FieldOut(
                id=f.id,
                source_name=f.source_name,
                width=f.width,
                height=f.height,
                display_scale=f.display_scale,
                image_url=field_image_url(f.id, root),
                cells=boxes.get(f.id, []),
            )
            for f in fields
        ],
    )


def field_image(*, session: Session, field_id: int) -> bytes:
    """The display JPEG of a field."""
    data = session.scalar(select(Field.display_jpeg).where(Field.id == field_id))
    if data is None:
        raise NotFound(f"no field with id {field_id}")
    return data


def cell_field(*, session: Session, cell_id: int, root: str = "") -> CellFieldOut:
    """Where a located cell was found: its field, box and centre."""
    row = session.execute(
        select(Cell, Label.value).outerjoin(Label, Label.id == Cell.current_label_id).where(Cell.id == cell_id)
    ).first()
    if row is None:
        raise NotFound(f"no cell with id {cell_id}")
    cell, label = row
    if cell.field_id is None:
        raise NotFound(f"cell {cell_id} was imported as a tile, not located in a field: it has no field to show")
    field, sample = session.execute(
        select(Field, Sample).join(Sample, Sample.id == Field.sample_id).where(Field.id == cell.field_id)
    ).one()
    return CellFieldOut(
        cell_id=cell.id,
        sample_id=sample.id,
        sample=sample.identifier,
        field_id=field.id,
        source_name=field.source_name,
        width=field.width,
        height=field.height,
        display_scale=field.display_scale,
        image_url=field_image_url(field.id, root),
        cell=_cell_box(cell, label),
    )


# --- the differential count ---------------------------------------------------------------------


def _block(counts: dict[str, int], classes: list[tuple[str, bool]]) -> CountBlock:
    """Counts per class; WBC classes as % of the WBC counted, the others per 100 WBC."""
    known = {name for name, _ in classes}
    rows = [*classes, *((name, False) for name in sorted(counts) if name not in known)]  # e.g. a removed class
    wbc_total = sum(counts.get(name, 0) for name, is_wbc in rows if is_wbc)

    def item(name: str, is_wbc: bool) -> ClassCount:
        count = counts.get(name, 0)
        percent = round(100.0 * count / wbc_total, 2) if wbc_total else None
        return ClassCount(name=name, is_wbc=is_wbc, count=count, percent=percent)

    return CountBlock(
        wbc_total=wbc_total,
        wbc=[item(name, True) for name, is_wbc in rows if is_wbc],
        non_wbc=[item(name, False) for name, is_wbc in rows if not is_wbc],
    )


def differential(*, session: Session, sample_id: int) -> DifferentialOut:
    """The differential count of a sample: expert labels, and apart the active model's predictions."""
    sample = get_sample(session=session, sample_id=sample_id)
    classes = [tuple(r) for r in session.execute(select(CellClass.name, CellClass.is_wbc).order_by(CellClass.position))]
    in_sample = Cell.sample_id == sample_id
    total = session.scalar(select(func.count(Cell.id)).where(in_sample)) or 0
    expert = dict(
        session.execute(
            select(Label.value, func.count(Cell.id))
            .join(Label, Label.id == Cell.current_label_id)
            .where(in_sample)
            .group_by(Label.value)
        ).all()
    )
    unsure = expert.pop(UNSURE, 0)
    to_review = total - sum(expert.values())  # unlabelled, or marked unsure
    without_class = or_(Cell.current_label_id.is_(None), Label.value == UNSURE)
    model_id = session.scalar(select(ModelVersion.id).where(ModelVersion.is_active.is_(True)))
    predicted: dict[str, int] = {}
    if model_id is not None:
        predicted = dict(
            session.execute(
                select(Prediction.predicted, func.count(Cell.id))
                .join(Prediction, (Prediction.cell_id == Cell.id) & (Prediction.model_version_id == model_id))
                .outerjoin(Label, Label.id == Cell.current_label_id)
                .where(in_sample, without_class)
                .group_by(Prediction.predicted)
            ).all()
        )
    return DifferentialOut(
        sample_id=sample.id,
        identifier=sample.identifier,
        note=sample.note,
        cells=total,
        expert=_block(expert, classes),
        unsure=unsure,
        model_version_id=model_id,
        predicted=_block(predicted, classes),
        not_scored=to_review - sum(predicted.values()),
        to_review=to_review,
    )


CSV_HEADER = ["sample", "source", "class", "is_wbc", "count", "percent", "percent_of"]


def differential_csv(report: DifferentialOut) -> str:
    """The differential count as CSV: expert rows, then prediction rows (marked), then the cells to review."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    sample = csv_safe(report.identifier)
    for source, block in (("expert", report.expert), (f"predicted by model v{report.model_version_id}", None)):
        if block is None:
            if report.model_version_id is None:
                continue
            block = report.predicted
        for item in (*block.wbc, *block.non_wbc):
            percent = "" if item.percent is None else f"{item.percent:.2f}"
            basis = "% of WBC" if item.is_wbc else "per 100 WBC"
            writer.writerow([sample, source, csv_safe(item.name), str(item.is_wbc).lower(), item.count, percent, basis])
        writer.writerow([sample, source, "WBC total", "true", block.wbc_total, "", ""])
    writer.writerow([sample, "expert", UNSURE, "", report.unsure, "", ""])
    if report.model_version_id is not None:
        writer.writerow([sample, "not scored", "", "", report.not_scored, "", ""])
    writer.writerow([sample, "to review", "", "", report.to_review, "", ""])
    writer.writerow([sample, "all cells", "", "", report.cells, "", ""])
    return buffer.getvalue()
