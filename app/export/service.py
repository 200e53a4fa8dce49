"""Exporting labels (CSV, ImageFolder, COCO) and locating exported models. Services never commit.

Labels: the expert label of each cell (``Cell.current_label_id``) by default. Pseudo-labels and
predictions of a model version come only when asked for, one row per cell without an expert
label, and every row then says where it comes from (the ``origin`` column; an ImageFolder puts
them in folders of their own, so they can never re-import as expert labels).

There are no samples yet: the ``sample`` column is the cell's ``slide``, as imported.

The files of an export are produced as ``(path, bytes)`` pairs, so the same code writes a folder
(the CLI) or a zip streamed to the browser (``stream_zip``). Rows are read up front, in the
request; the pixels are read in batches while the files are written, in a session of their own
(a streamed response outlives the request's session).

The web process does not import torch: models are exported by the worker when it registers a
version (``model_export_dir``), and by ``leukolab export model``; here we only find the files.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from sqlalchemy import Select, exists, select
from sqlalchemy.orm import Session, aliased

from app.db import session_scope
from app.errors import InvalidInput, NotFound
from app.models import UNSURE, Cell, CellClass, Label, ModelVersion, Prediction, User, as_utc
from app.statuses import LabelKind

LABEL_FORMATS = ("csv", "imagefolder", "coco")
MODEL_FORMATS = ("onnx", "torchscript")
CSV_COLUMNS = (
    "cell_id",
    "sample",
    "source_name",
    "sha256",
    "label",
    "labelled_by",
    "labelled_at",
    "readers",
    "agreement",
)
# Present only when pseudo-labels or predictions were asked for.
MARKED_COLUMNS = ("origin", "model_version")
EXPERT, PSEUDO, PREDICTION = "expert", "pseudo-label", "prediction"
# ImageFolder roots when non-expert rows are exported too: each is a clean ImageFolder of its own.
ORIGIN_FOLDERS = {EXPERT: "expert", PSEUDO: "pseudo-labels", PREDICTION: "predictions"}
CSV_NAME = "labels.csv"
COCO_NAME = "annotations.json"
_PIXEL_BATCH = 256
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LabelRow:
    cell_id: int
    sample: str | None
    source_name: str
    sha256: str
    label: str
    labelled_by: str
    labelled_at: datetime | None
    readers: int
    agreement: bool | None  # None when fewer than two people labelled the cell
    display_size: int
    origin: str = EXPERT
    model_version: int | None = None

    @property
    def file_name(self) -> str:
        """A file name unique per cell that keeps the source's name readable."""
        stem = _UNSAFE_NAME.sub("_", PurePosixPath(self.source_name).stem).strip("._")[:80] or "cell"
        return f"{self.cell_id}-{stem}.png"


def _standing_labels() -> Select:
    """Label rows that no undo row cancels, oldest first."""
    undo = aliased(Label)
    return (
        select(Label.cell_id, Label.user_id, Label.value)
        .where(Label.kind == LabelKind.LABEL, ~exists(select(undo.id).where(undo.undoes_id == Label.id)))
        .order_by(Label.id)
    )


def _readers(session: Session) -> dict[int, tuple[int, bool | None]]:
    """Per labelled cell: how many people's labels stand, and whether they agree."""
    latest: dict[int, dict[int, str]] = {}
    for cell_id, user_id, value in session.execute(_standing_labels()):
        latest.setdefault(cell_id, {})[user_id] = value  # a person's newer label replaces their older one
    return {
        cell_id: (len(by_user), len(set(by_user.values())) == 1 if len(by_user) > 1 else None)
        for cell_id, by_user in latest.items()
    }


def _expert_rows(session: Session) -> list[LabelRow]:
    readers = _readers(session)
    rows = session.execute(
        select(
            Cell.id,
            Cell.slide,
            Cell.source_name,
            Cell.sha256,
            Cell.display_size,
            Label.value,
            User.username,
            Label.created_at,
        )
        .join(Label, Label.id == Cell.current_label_id)
        .join(User, User.id == Label.user_id)
        .order_by(Cell.id)
    )
    return [
        LabelRow(
            cell_id=cell_id,
            sample=slide,
            source_name=source_name,
            sha256=sha256,
            label=value,
            labelled_by=username,
            labelled_at=as_utc(created_at),
            readers=readers.get(cell_id, (1, None))[0],
            agreement=readers.get(cell_id, (1, None))[1],
            display_size=display_size,
        )
        for cell_id, slide, source_name, sha256, display_size, value, username, created_at in rows
    ]


def _model_rows(session: Session, *, version_id: int, pseudo_labels: bool, predictions: bool) -> list[LabelRow]:
    """The model's pseudo-label (else, if asked, its prediction) of each cell without an expert label."""
    query = (
        select(
            Cell.id,
            Cell.slide,
            Cell.source_name,
            Cell.sha256,
            Cell.display_size,
            Prediction.predicted,
            Prediction.pseudo_label,
            Prediction.created_at,
        )
        .join(Prediction, Prediction.cell_id == Cell.id)
        .where(Prediction.model_version_id == version_id, Cell.current_label_id.is_(None))
        .order_by(Cell.id)
    )
    if not predictions:
        query = query.where(Prediction.pseudo_label.is_not(None))
    rows = []
    for cell_id, slide, source_name, sha256, display_size, predicted, pseudo, created_at in session.execute(query):
        origin = PSEUDO if pseudo_labels and pseudo is not None else PREDICTION
        rows.append(
            LabelRow(
                cell_id=cell_id,
                sample=slide,
                source_name=source_name,
                sha256=sha256,
                label=pseudo if origin == PSEUDO else predicted,
                labelled_by=f"model v{version_id}",
                labelled_at=as_utc(created_at),
                readers=0,
                agreement=None,
                display_size=display_size,
                origin=origin,
                model_version=version_id,
            )
        )
    return rows


def label_rows(
    *, session: Session, pseudo_labels: bool = False, predictions: bool = False, model_version_id: int | None = None
) -> list[LabelRow]:
    """The rows of a label export by cell id: expert labels, plus the model's when asked for."""
    rows = _expert_rows(session)
    if pseudo_labels or predictions:
        version_id = _scoring_version_id(session, model_version_id)
        rows += _model_rows(session, version_id=version_id, pseudo_labels=pseudo_labels, predictions=predictions)
        rows.sort(key=lambda row: row.cell_id)
    return rows


def _scoring_version_id(session: Session, model_version_id: int | None) -> int:
    if model_version_id is not None:
        if session.get(ModelVersion, model_version_id) is None:
            raise NotFound(f"no model version with id {model_version_id}")
        return model_version_id
    active = session.scalar(select(ModelVersion.id).where(ModelVersion.is_active.is_(True)))
    if active is None:
        raise InvalidInput(
            "pseudo-labels and predictions come from a model version: promote one on the Models page, "
            "or name one (model_version)"
        )
    return active


def class_names(*, session: Session) -> list[tuple[str, bool]]:
    """(name, is_wbc) of every class, in display order."""
    return [
        tuple(row) for row in session.execute(select(CellClass.name, CellClass.is_wbc).order_by(CellClass.position))
    ]


# --- CSV -----------------------------------------------------------------------------------------


def csv_safe(value: object) -> object:
    """``value``, with a leading quote when a spreadsheet would read the text as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_record(row: LabelRow, marked: bool) -> list[object]:
    record = [
        row.cell_id,
        csv_safe(row.sample or ""),
        csv_safe(row.source_name),
        row.sha256,
        csv_safe(row.label),
        csv_safe(row.labelled_by),
        row.labelled_at.isoformat() if row.labelled_at else "",
        row.readers,
        "" if row.agreement is None else str(row.agreement).lower(),
    ]
    if marked:
        record += [row.origin, row.model_version if row.model_version is not None else ""]
    return record


def csv_chunks(rows: Iterable[LabelRow], *, marked: bool, chunk_rows: int = 1000) -> Iterator[str]:
    """The CSV text of ``rows`` in chunks; ``marked`` adds the origin and model version columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*CSV_COLUMNS, *(MARKED_COLUMNS if marked else ())])
    for index, row in enumerate(rows, start=1):
        writer.writerow(_csv_record(row, marked))
        if index % chunk_rows == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# --- COCO ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoBox:
    row: LabelRow
    bbox: tuple[float, float, float, float]  # x, y, width, height in the image's pixels


@dataclass(frozen=True)
class CocoImage:
    file_name: str
    width: int
    height: int
    pixels_of_cell: int  # whose stored PNG is this image's file
    extra: dict = field(default_factory=dict)


def cell_images(rows: Iterable[LabelRow]) -> Iterator[tuple[CocoImage, list[CocoBox]]]:
    """Each cell as an image of its own, with one box over all of it.

    This is the source while there are no smear fields. When fields are imported, a source of
    the same shape yields each field's image with the boxes of its cells, and ``coco_document``
    and ``label_files`` take it unchanged.
    """
    for row in rows:
        size = row.display_size
        image = CocoImage(
            file_name=f"images/{row.file_name}",
            width=size,
            height=size,
            pixels_of_cell=row.cell_id,
            extra={"cell_id": row.cell_id, "sha256": row.sha256, "source_name": row.source_name, "sample": row.sample},
        )
        yield image, [CocoBox(row, (0.0, 0.0, float(size), float(size)))]


def coco_document(
    items: Iterable[tuple[CocoImage, list[CocoBox]]], *, classes: list[tuple[str, bool]], marked: bool
) -> dict:
    """A COCO detection document: categories are the classes; extra fields go under ``leukolab``."""
    categories = {name: index for index, (name, _) in enumerate(classes, start=1)}
    supercategory = {name: "wbc" if is_wbc else "other" for name, is_wbc in classes}
    images, annotations = [], []
    for image_id, (image, boxes) in enumerate(items, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": image.file_name,
                "width": image.width,
                "height": image.height,
                "leukolab": image.extra,
            }
        )
        for box in boxes:
            if box.row.label not in categories:  # a class since removed
                categories[box.row.label] = len(categories) + 1
                supercategory[box.row.label] = "other"
            extra = {
                "cell_id": box.row.cell_id,
                "labelled_by": box.row.labelled_by,
                "labelled_at": box.row.labelled_at.isoformat() if box.row.labelled_at else None,
                "readers": box.row.readers,
                "agreement": box.row.agreement,
            }
            if marked:
                extra |= {"origin": box.row.origin, "model_version": box.row.model_version}
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[box.row.label],
                    "bbox": list(box.bbox),
                    "area": box.bbox[2] * box.bbox[3],
                    "iscrowd": 0,
                    "leukolab": extra,
                }
            )
    return {
        "info": {
            "description": "leukolab labels"
            + (" with pseudo-labels/predictions (see annotations' leukolab.origin)" if marked else " (expert)"),
            "date_created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "note": "one image per cell (its stored display copy: square, at most 256 px) until smear fields exist",
        },
        "licenses": [],
        "categories": [
            {"id": index, "name": name, "supercategory": supercategory[name]} for name, index in categories.items()
        ],
        "images": images,
        "annotations": annotations,
    }


# --- files ---------------------------------------------------------------------------------------


def _display_pngs(cell_ids: list[int]) -> Iterator[tuple[int, bytes]]:
    """The stored display PNG of each cell, in the order given, read in batches."""
    with session_scope() as session:
        for start in range(0, len(cell_ids), _PIXEL_BATCH):
            batch = cell_ids[start : start + _PIXEL_BATCH]
            pngs = dict(session.execute(select(Cell.id, Cell.display_png).where(Cell.id.in_(batch))).all())
            for cell_id in batch:
                yield cell_id, pngs[cell_id]


def label_files(
    rows: list[LabelRow], *, format: str, classes: list[tuple[str, bool]], marked: bool
) -> Iterator[tuple[str, bytes]]:
    """The files of a label export as ``(relative path, bytes)``; images are the stored display PNGs.

    ``unsure`` is a label but not a class: it is kept in the CSV, left out of ImageFolder and COCO.
    """
    if format not in LABEL_FORMATS:
        raise InvalidInput(f"unknown label export format {format!r}; use one of {', '.join(LABEL_FORMATS)}")
    csv_bytes = "".join(csv_chunks(rows, marked=marked)).encode()
    if format == "csv":
        yield CSV_NAME, csv_bytes
        return
    classed = [row for row in rows if row.label != UNSURE]
    if format == "imagefolder":
        yield CSV_NAME, csv_bytes  # the importer skips it as a note
        paths = {row.cell_id: _imagefolder_path(row, marked) for row in classed}
        for cell_id, png in _display_pngs([row.cell_id for row in classed]):
            yield paths[cell_id], png
        return
    items = list(cell_images(classed))
    document = coco_document(items, classes=classes, marked=marked)
    yield COCO_NAME, json.dumps(document, indent=1).encode()
    names = {image.pixels_of_cell: image.file_name for image, _ in items}
    for cell_id, png in _display_pngs(list(names)):
        yield names[cell_id], png


def _imagefolder_path(row: LabelRow, marked: bool) -> str:
    folder = _UNSAFE_NAME.sub("_", row.label)
    root = f"{ORIGIN_FOLDERS[row.origin]}/" if marked else ""
    return f"{root}{folder}/{row.file_name}"


def write_files(files: Iterable[tuple[str, bytes]], out: Path) -> int:
    """Write ``files`` below the folder ``out``; returns how many."""
    count = 0
    root = out.resolve()
    for name, data in files:
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise InvalidInput(f"refusing to write {name!r} outside {out}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
    return count


class _ChunkWriter(io.RawIOBase):
    """A write-only, unseekable file that hands over what was written since the last ``take``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buffer += data
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def stream_zip(files: Iterable[tuple[str, bytes | Path]], *, piece: int = 1024**2) -> Iterator[bytes]:
    """A zip of ``files`` as chunks: bytes, or a file read ``piece`` bytes at a time; PNGs stored,
    the rest deflated."""
    writer = _ChunkWriter()
    with zipfile.ZipFile(writer, "w") as archive:  # unseekable: sizes go in data descriptors
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=datetime.now().timetuple()[:6])
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            if isinstance(data, Path):
                info.file_size = data.stat().st_size  # lets zipfile choose zip64 up front
                with data.open("rb") as source, archive.open(info, "w") as target:
                    while block := source.read(piece):
                        target.write(block)
                        if chunk := writer.take():
                            yield chunk
            else:
                archive.writestr(info, data)
            if chunk := writer.take():
                yield chunk
    yield writer.take()


# --- models --------------------------------------------------------------------------------------


def model_export_dir(version: ModelVersion, format: str) -> Path:
    """The folder of ``version``'s exported network and card in ``format``, beside its checkpoint."""
    return Path(version.artefact_path).parent / "exports" / f"model-v{version.id}" / format


def model_facts(version: ModelVersion) -> dict:
    """What a model card needs from the database: the version, its metrics and label counts."""
    metrics = version.metrics or {}
    data = metrics.get("data") or {}
    expert = data["n_train"] + data["n_val"] if "n_train" in data and "n_val" in data else None
    pseudo = None
    if "funnel" in metrics:  # the worker always records it; None when nothing was pseudo-labelled
        funnel = metrics["funnel"] or {}
        pseudo = funnel.get("set2") if funnel.get("set2") is not None else funnel.get("set1", 0)
    return {
        "model_version": version.id,
        "run_id": version.run_id,
        "created_at": as_utc(version.created_at).isoformat() if version.created_at else None,
        "expert_labels": expert,
        "pseudo_labels": pseudo,
        "metrics": metrics,
    }


def model_versions(*, session: Session) -> list[ModelVersion]:
    """Every model version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def select_model_version(*, session: Session, version_id: int | None) -> ModelVersion:
    """The version ``version_id``, or the active one."""
    if version_id is not None:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"no model version with id {version_id}")
        return version
    version = session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))
    if version is None:
        raise NotFound("no model version is active: name one (version)")
    return version


def exported_model_files(*, version: ModelVersion, format: str) -> list[tuple[str, Path]]:
    """The worker's export of ``version`` in ``format`` as ``(name, path)``; NotFound when absent."""
    if format not in MODEL_FORMATS:
        raise InvalidInput(f"unknown model format {format!r}; use one of {', '.join(MODEL_FORMATS)}")
    folder = model_export_dir(version, format)
    files = sorted(path for path in folder.glob("*") if path.is_file() and not path.name.startswith("."))
    if not any(path.name.endswith(".card.json") for path in files):
        raise NotFound(
            f"model v{version.id} has no {format} export: the worker writes one when it registers a version; "
            f"for an older version run `leukolab export model OUT --format {format} --version {version.id}`"
        )
    return [(path.name, path) for path in files]
