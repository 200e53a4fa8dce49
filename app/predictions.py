"""Read side of the active model's predictions, used by the labelling page and API."""

from __future__ import annotations

from sqlalchemy.orm import Session


def suggestion_for(*, session: Session, cell_id: int) -> dict | None:
    """The active model's suggestion for ``cell_id``; ``None`` until a model has scored it."""
    from app.training.service import prediction_for

    prediction = prediction_for(session=session, cell_id=cell_id)
    if prediction is None:
        return None
    return {"label": prediction.predicted, "confidence": round(float(prediction.confidence), 4)}
