"""Read side of the active model's predictions, used by the labelling page and API."""

from __future__ import annotations

from sqlalchemy.orm import Session


def suggestion_for(*, session: Session, cell_id: int) -> dict | None:
    """The active model's suggestion for ``cell_id``; ``None`` until a model has scored it."""
    from app.models import ModelVersion
    from app.training.service import prediction_for

    prediction = prediction_for(session=session, cell_id=cell_id)
    if prediction is None:
        return None
    version = session.get(ModelVersion, prediction.model_version_id)
    suggestion = {
        "label": prediction.predicted,
        "confidence": round(float(prediction.confidence), 4),
        # "reference": the installed reference model (another lab's cells) serves it; "local": this lab's own
        "source": version.origin,
    }
    threshold = version.ood_threshold
    if prediction.ood_score is not None and threshold is not None:
        suggestion["ood_score"] = round(float(prediction.ood_score), 4)
        # Far from everything the model was taught: its class guess would mislead, so it is not shown.
        suggestion["unlike_known"] = bool(prediction.ood_score > threshold)
    return suggestion
