from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.params import JsonInt, RequestBody


class ReadingSettings(BaseModel):
    readers_per_cell: JsonInt = Field(ge=1, le=2, description="1: single reading; 2: double reading")
    double_read_fraction: float = Field(
        ge=0.0, le=1.0, allow_inf_nan=False, description="with 2 readers: the share of cells read twice (1 = all)"
    )


class ReadingSettingsIn(ReadingSettings, RequestBody):
    """The body of ``PUT /settings``: strict JSON types, so ``false`` is not taken for 0 nor ``"2"`` for 2."""

    model_config = ConfigDict(strict=True)


class ConfusionOut(BaseModel):
    labels: list[str]
    matrix: list[list[int]] = Field(description="rows: reader_a's labels, columns: reader_b's")


class PairOut(BaseModel):
    reader_a: str
    reader_b: str
    cells: int
    kappa: float | None = Field(description="Cohen's kappa; null when undefined (one class only, or no cells)")
    confusion: ConfusionOut


class AgreementOut(BaseModel):
    pairs: list[PairOut]
    overall_kappa: float | None
    pending_adjudication: int


class ReadOut(BaseModel):
    label_id: int
    user: str
    label: str


class AdjudicationCase(BaseModel):
    cell_id: int
    image_url: str
    reads: list[ReadOut]


class AdjudicationIn(RequestBody):
    label: str = Field(max_length=64, description="a class name (or `unsure`)")


class AdjudicationOut(BaseModel):
    id: int
    cell_id: int
    label: str
    user: str
    created_at: datetime
