from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.params import RequestBody


class ShownSuggestion(BaseModel):
    """A model's class and confidence as a reader saw them (kept on the label row)."""

    label: str
    confidence: float


class Suggestion(ShownSuggestion):
    unlike_known: bool = Field(
        default=False, description="the cell lies far from every class the model knows ('unlike any known class')"
    )
    ood_score: float | None = None
    source: Literal["local", "reference"] = Field(
        default="local",
        description="which model suggests it: 'reference' is the installed reference model (trained on another "
        "lab's cells; it serves until this lab's own model is promoted), 'local' a model trained here",
    )


class NextCell(BaseModel):
    cell_id: int
    image_url: str
    reason: str
    reason_text: str = ""
    suggestion: Suggestion | None = None
    lease_until: datetime | None = None


class LabelIn(RequestBody):
    label: str
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="chosen by the client for each new label (e.g. a UUID) and sent again with every retry of it: "
        "a retry is answered 200 with the first row, never stored twice",
    )


class LabelOut(BaseModel):
    id: int
    cell_id: int
    label: str
    user: str
    created_at: datetime
    idempotency_key: str | None = None
    lease_holder: str | None = Field(
        default=None, description="who held a live lease on the cell when it was labelled, if not the labeller"
    )


class UndoOut(BaseModel):
    undone_label_id: int
    cell_id: int
    label: str
    image_url: str = ""


class Stats(BaseModel):
    cells: int
    labelled: int
    unsure: int
    per_class: dict[str, int]
    queue: int
    queue_held: int = 0
    my_today: int | None = None


class ClassOut(BaseModel):
    name: str
    hotkey: str
    position: int


class LeaseOut(BaseModel):
    cell_id: int
    lease_until: datetime
