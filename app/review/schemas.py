from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from app.labelling.schemas import Suggestion
from app.params import BoundedId, RequestBody
from app.review.service import MAX_BULK


class GridCellOut(BaseModel):
    cell_id: int
    prediction: Suggestion | None = Field(description="the active model's class and confidence, if it scored the cell")
    label: str | None = Field(description="the cell's expert label (consensus under double reading), if any")


class GridPageOut(BaseModel):
    cells: list[GridCellOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class BulkLabelIn(RequestBody):
    cell_ids: list[BoundedId] = Field(min_length=1, max_length=MAX_BULK)
    label: str | None = Field(default=None, max_length=64, description="a class name or `unsure`")
    as_predicted: bool = Field(
        default=False, description="instead of `label`: give each cell the active model's predicted class"
    )

    @model_validator(mode="after")
    def _one_of(self) -> BulkLabelIn:
        if self.as_predicted == (self.label is not None):
            raise ValueError("give either label or as_predicted: true")
        return self


class BulkLabelOut(BaseModel):
    action_id: int
    count: int


class UndoActionOut(BaseModel):
    action_id: int = Field(description="the bulk action undone")
    undo_action_id: int
    count: int = Field(description="label rows undone")
