"""What the cells API answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ImportSummaryOut(BaseModel):
    """An import that succeeded: what it added, and the non-image notes it skipped."""

    model_config = ConfigDict(from_attributes=True)

    imported: int
    duplicates: int
    labelled: int
    import_id: int | None
    skipped: list[str]
