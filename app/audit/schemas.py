from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.labelling.schemas import ShownSuggestion


class EventOut(BaseModel):
    # Built from app.audit.service.Event dataclasses (``ActivityOut(events=...)`` gave a 500 without it).
    model_config = ConfigDict(from_attributes=True)

    label_id: int
    cell_id: int
    event: str = Field(description="label | undo | bulk label | bulk undo | adjudication")
    label: str | None = Field(description="the value given; null for an undo")
    undoes_id: int | None
    user: str
    created_at: datetime
    source: str = Field(description="manual | import | review | adjudication")
    action_id: int | None = Field(description="the bulk review action this row belongs to")
    suggestion: ShownSuggestion | None = Field(description="the model's suggestion shown when the label was given")


class ActivityOut(BaseModel):
    events: list[EventOut]
    next_before_id: int | None = Field(description="pass as before_id for older events; null at the end")
