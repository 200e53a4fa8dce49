from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from app.params import JsonInt, RequestBody
from ml.config import DEFAULT_METHOD, METHODS, PROFILES


class RunCreate(RequestBody):
    # Strict: JSON types as the schema gives them; `"auto_promote": 0` or `"epochs": "5"` is a 422, not a guess.
    model_config = ConfigDict(strict=True)

    # The enums document the service's check (app.training.service.create_run), which answers an unknown
    # name with a 422 listing the allowed ones.
    method: str = Field(default=DEFAULT_METHOD, json_schema_extra={"enum": list(METHODS)})
    profile: str = Field(default="cpu", json_schema_extra={"enum": list(PROFILES)})
    epochs: JsonInt | None = Field(default=None, ge=1, le=1000)
    entropy_threshold: float | None = Field(default=None, gt=0, le=2)
    warm_start: bool = True
    # None: on when a reference model is installed. A run starts from the active model of this lab's
    # when there is one (warm_start), else from the reference model.
    warm_start_from_reference: bool | None = Field(
        default=None,
        description="start from the installed reference model when no model of this lab's is active "
        "(default: on when a reference is installed)",
    )
    auto_promote: bool = False

    def params(self) -> dict:
        return self.model_dump()


class RunAccepted(BaseModel):
    id: int
    status: str


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
    """A model version's scoring of the unlabelled cells (its ``scoring_*`` columns)."""

    model_config = ConfigDict(from_attributes=True)

    status: str = Field(validation_alias=AliasChoices("status", "scoring_status"))
    done: int = Field(validation_alias=AliasChoices("done", "scoring_done"))
    total: int = Field(validation_alias=AliasChoices("total", "scoring_total"))
    scored_at: datetime | None


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int | None
    is_active: bool
    class_names: list[str]
    ood_threshold: float | None = None
    ood_method: str | None = None
    origin: str = Field(default="local", description="'local': trained here; 'reference': the installed reference")
    metrics: dict | None
    created_at: datetime
    promoted_at: datetime | None
    scoring: ScoringOut

    @model_validator(mode="before")
    @classmethod
    def _nest_scoring(cls, data: Any) -> Any:
        """A ModelVersion row keeps its scoring in columns of its own; the API nests them."""
        if isinstance(data, dict):
            return data
        return {name: getattr(data, name) for name in cls.model_fields if name != "scoring"} | {"scoring": data}


class QueueEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    cell_id: int
    priority: float
    reason: str
    detail: dict | None
    leased: bool
