"""What the samples API answers: samples, their fields with cell boxes, a cell's field, the differential count."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class SampleOut(BaseModel):
    id: int
    identifier: str
    note: str | None
    um_per_px: float = Field(description="pixel size of this sample's fields, in µm per pixel")
    created_at: datetime
    fields: int
    cells: int


class CellBox(BaseModel):
    """A located cell: its box in field pixels (x1, y1 exclusive) and the centre its crop is cut around."""

    cell_id: int
    box: tuple[int, int, int, int]
    centre: tuple[float, float]
    touches_edge: bool = Field(description="the cell box reached the field edge and was cut there")
    merged: bool = Field(description="touching cells that could not be split: the box holds more than one cell")
    label: str | None = Field(description="the standing expert label, if any")


class FieldOut(BaseModel):
    id: int
    source_name: str
    width: int
    height: int
    display_scale: float = Field(description="display-copy pixels per field pixel (at most 1)")
    image_url: str
    cells: list[CellBox]


class SampleDetail(SampleOut):
    field_list: list[FieldOut] = Field(description="the sample's fields, each with every located cell")


class CellFieldOut(BaseModel):
    """A located cell in its field: what the labelling page's field view draws."""

    cell_id: int
    sample_id: int
    sample: str
    field_id: int
    source_name: str
    width: int
    height: int
    display_scale: float
    image_url: str
    cell: CellBox


class ClassCount(BaseModel):
    name: str
    is_wbc: bool
    count: int
    percent: float | None = Field(
        description="a white-cell class: % of the white cells counted; any other class (artefact...): per 100 "
        "white cells. None when no white cell was counted"
    )


class CountBlock(BaseModel):
    wbc_total: int = Field(description="white cells counted (classes with is_wbc)")
    wbc: list[ClassCount]
    non_wbc: list[ClassCount] = Field(description="classes that are not white cells, reported per 100 WBC")


class DifferentialOut(BaseModel):
    """A sample's differential count: expert labels, and apart from them the active model's predictions
    for cells without an expert class (never mixed into the expert count)."""

    sample_id: int
    identifier: str
    note: str | None
    cells: int = Field(description="every cell of the sample")
    expert: CountBlock = Field(description="from the standing expert labels")
    unsure: int = Field(description="cells an expert marked unsure")
    model_version_id: int | None = Field(description="the active model, whose predictions are counted")
    predicted: CountBlock = Field(description="predictions of the active model for cells without an expert class")
    not_scored: int = Field(description="cells without an expert class that the active model has not scored")
    to_review: int = Field(description="cells still to review: no expert label, or marked unsure")


class SampleImportOut(BaseModel):
    identifier: str
    sample_id: int
    created: bool
    fields: int
    cells: int
    duplicates: int
    touching_edge: int
    merged: int
    empty_fields: list[str] = Field(description="fields imported with no white cell in them")


class FieldImportOut(BaseModel):
    samples: list[SampleImportOut]
    fields: int
    cells: int
    duplicates: int = Field(description="fields already in their sample, skipped")
    empty_fields: list[str]
    import_id: int | None
    skipped: list[str] = Field(description="notes beside the images (README.md...), not imported")
