from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Suggestion(BaseModel):
    label: str
    confidence: float


class NextCell(BaseModel):
    cell_id: int
    image_url: str
    reason: str
    reason_text: str = ""
    suggestion: Suggestion | None = None
    lease_until: datetime | None = None


class LabelIn(BaseModel):
    label: str


class LabelOut(BaseModel):
    id: int
    cell_id: int
    label: str
    user: str
    created_at: datetime


class UndoOut(BaseModel):
    undone_label_id: int
    cell_id: int
    label: str


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
