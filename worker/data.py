"""Cells from the database as the uint8 tensors ``ml`` trains on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Cell
from ml.images import MODEL_SIZE


def cells_to_tensor(model_inputs: Sequence[bytes]) -> torch.Tensor:
    """Stored ``model_input`` bytes (64×64×3 RGB, row-major) → uint8 N×3×64×64."""
    if not model_inputs:
        return torch.empty(0, 3, MODEL_SIZE, MODEL_SIZE, dtype=torch.uint8)
    array = np.frombuffer(b"".join(model_inputs), dtype=np.uint8).reshape(-1, MODEL_SIZE, MODEL_SIZE, 3)
    return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).contiguous()


def load_inputs(session: Session, cell_ids: Sequence[int], chunk: int = 2000) -> torch.Tensor:
    """The model inputs of ``cell_ids``, in that order."""
    by_id: dict[int, bytes] = {}
    ids = list(cell_ids)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        by_id.update(session.execute(select(Cell.id, Cell.model_input).where(Cell.id.in_(part))).all())
    return cells_to_tensor([by_id[i] for i in ids])
