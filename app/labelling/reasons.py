"""Why a cell is in the queue, in words a cytologist uses: the worker stores machine reasons
("high entropy", "low margin", ...) and these functions translate them for display only."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ModelVersion, Prediction


def plain_reason(reason: str, top: list[tuple[str, float]]) -> str:
    """A sentence for queue ``reason``, naming the model's two likeliest classes ``top`` when known."""
    first = top[0][0] if top else None
    pair = f"{top[0][0]} and {top[1][0]}" if len(top) >= 2 else None
    if reason == "low margin":
        return f"the model is unsure between {pair}" if pair else "the model is unsure between two classes"
    if reason == "high entropy":
        return (
            f"the model cannot tell what this cell is (best guesses: {pair})"
            if pair
            else "the model cannot tell what this cell is"
        )
    if reason == "rejected by filters":
        return (
            f"the model guesses {first} but not surely enough to use without an expert"
            if first
            else "the model's guess is not sure enough to use without an expert"
        )
    if reason == "diverse":
        return "unlike the cells labelled so far: it helps the model learn more kinds of cells"
    if reason == "unlike any known class":
        return "unlike every class the model was taught: perhaps a kind of cell the lab has no class for yet"
    if reason == "cold start":
        return "one of the first cells to label, chosen to cover the variety of the cells (no model yet)"
    if reason == "random":
        return "picked at random, to check the model"
    if reason == "unlabelled":
        return "not labelled yet"
    if reason == "undo":
        return "you undid its label"
    return reason


def top_classes(*, session: Session, cell_id: int, n: int = 2) -> list[tuple[str, float]]:
    """The active model's ``n`` likeliest classes for ``cell_id`` with their probabilities, best first."""
    row = session.execute(
        select(Prediction.probs, ModelVersion.class_names)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(ModelVersion.is_active.is_(True), Prediction.cell_id == cell_id)
    ).first()
    if row is None or not row.probs or len(row.probs) != len(row.class_names):
        return []
    ranked = sorted(zip(row.class_names, row.probs, strict=True), key=lambda pair: pair[1], reverse=True)
    return [(name, float(p)) for name, p in ranked[:n]]
