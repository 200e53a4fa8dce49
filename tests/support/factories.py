"""Rows for tests, written through the same services the app uses."""

from __future__ import annotations

import hashlib
import io
import random
from datetime import timedelta

import numpy as np
from PIL import Image

from app.db import session_scope
from app.models import Cell, TrainingRun, User, utcnow
from app.statuses import RunStatus
from app.users.schemas import UserCreate
from app.users.service import create_user

PASSWORD = "correct-horse-battery"


def make_user(name: str, role: str = "cytologist", password: str = PASSWORD) -> int:
    with session_scope() as session:
        return create_user(session=session, user_create=UserCreate(username=name, password=password, role=role)).id


def new_cell(image: Image.Image, *, source_name: str, random_key: float | None = None) -> Cell:
    """A cell row for ``image`` as an import stores it: the display copy as is, the model copy at 64×64."""
    png = io.BytesIO()
    image.save(png, format="PNG")
    return Cell(
        sha256=hashlib.sha256(np.asarray(image, dtype=np.uint8).tobytes()).hexdigest(),
        display_png=png.getvalue(),
        display_size=image.width,
        model_input=np.asarray(image.resize((64, 64))).tobytes(),
        source_name=source_name,
        random_key=random.random() if random_key is None else random_key,
    )


def make_cells(count: int, size: int = 32, seed: int = 0) -> list[int]:
    """Insert ``count`` distinct small cells of noise directly (import has its own tests)."""
    rng = np.random.default_rng(seed)
    ids = []
    with session_scope() as session:
        for index in range(count):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            cell = new_cell(Image.fromarray(pixels), source_name=f"generated/{seed}-{index}.png")
            session.add(cell)
            session.flush()
            ids.append(cell.id)
    return ids


def get_user(name: str) -> User:
    from sqlalchemy import select

    with session_scope() as session:
        return session.scalar(select(User).where(User.username == name))


def make_running_run(silent_s: float) -> int:
    """A ``running`` run (started by a new admin) whose worker last wrote a heartbeat ``silent_s`` ago."""
    admin_id = make_user("root", role="admin")
    with session_scope() as session:
        beat = utcnow() - timedelta(seconds=silent_s)
        run = TrainingRun(
            status=RunStatus.RUNNING,
            method="supervised",
            profile="tiny",
            params={},
            created_by=admin_id,
            started_at=beat - timedelta(seconds=5),
            heartbeat_at=beat,
        )
        session.add(run)
        session.flush()
        return run.id


def make_model(predictions: dict[int, tuple[str, float]], class_names: list[str] | None = None) -> int:
    """An active model version whose predictions are ``{cell_id: (class, confidence)}``."""
    from app.models import ModelVersion, Prediction

    names = class_names or ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "artefact"]
    with session_scope() as session:
        version = ModelVersion(artefact_path="/nonexistent/model.pt", class_names=names, is_active=True)
        session.add(version)
        session.flush()
        for cell_id, (label, confidence) in predictions.items():
            rest = (1.0 - confidence) / (len(names) - 1)
            probs = [confidence if name == label else rest for name in names]
            session.add(
                Prediction(
                    model_version_id=version.id,
                    cell_id=cell_id,
                    probs=probs,
                    predicted=label,
                    confidence=confidence,
                    entropy=0.5,
                    margin=0.1,
                    pseudo_label=None,
                    filter_outcome="rejected",
                )
            )
        return version.id
