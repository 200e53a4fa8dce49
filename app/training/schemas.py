from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ml.config import DEFAULT_METHOD


class RunCreate(BaseModel):
    method: str = DEFAULT_METHOD
    profile: str = "cpu"
    epochs: int | None = Field(default=None, ge=1, le=1000)
    entropy_threshold: float | None = Field(default=None, gt=0, le=2)
    warm_start: bool = True
    auto_promote: bool = False

    def params(self) -> dict:
        return self.model_dump()


class RunAccepted(BaseModel):
    id: int
    status: str


class RunOut(BaseModel):
    id: int
    status: str
    method: str
    profile: str
    params: dict
    progress: dict | None
    metrics: dict | None
    error: str | None
    cancel_requested: bool
    model_version_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ScoringOut(BaseModel):
    status: str
    done: int
    total: int
    scored_at: datetime | None


class ModelOut(BaseModel):
    id: int
    run_id: int | None
    is_active: bool
    class_names: list[str]
    ood_threshold: float | None = None
    ood_method: str | None = None
    metrics: dict | None
    created_at: datetime
    promoted_at: datetime | None
    scoring: ScoringOut


class QueueEntryOut(BaseModel):
    cell_id: int
    priority: float
    reason: str
    detail: dict | None
    leased: bool
