"""SQLAlchemy models. Alembic migrations in ``migrations/`` are the schema; these mirror them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.statuses import (
    FilterOutcome,
    LabelKind,
    LabelSource,
    Role,
    RunStatus,
    ScoringStatus,
    one_of,
)

UNSURE = "unsure"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` with its time zone (SQLite returns naive datetimes, which are UTC here)."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Signed into every session cookie and token; bumping it ends them all (logout, password change, deactivation).
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        CheckConstraint(one_of("role", Role), name="ck_users_role"),
        Index("uq_users_username_lower", func.lower(username), unique=True),
    )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class CellClass(Base):
    """A label a cytologist can give; ``position`` orders buttons and the model's outputs."""

    __tablename__ = "classes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    hotkey: Mapped[str] = mapped_column(String(8), unique=True)
    position: Mapped[int] = mapped_column(Integer)
    is_wbc: Mapped[bool] = mapped_column(Boolean, default=True)


class ImportBatch(Base):
    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    source: Mapped[str] = mapped_column(String(512))
    labelled: Mapped[bool] = mapped_column(Boolean, default=False)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Cell(Base):
    __tablename__ = "cells"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # The pixels are deferred: most queries need a cell's id and state, not its image.
    display_png: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    display_size: Mapped[int] = mapped_column(Integer)
    model_input: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # 64×64×3 uint8, row-major RGB
    source_name: Mapped[str] = mapped_column(String(512))
    slide: Mapped[str | None] = mapped_column(String(128))
    batch: Mapped[str | None] = mapped_column(String(128))
    import_id: Mapped[int | None] = mapped_column(ForeignKey("imports.id"))
    random_key: Mapped[float] = mapped_column(Float)
    # Cache of the label rows: the newest label of this cell that no undo row points at.
    # Written in the same transaction as the label rows, so it never disagrees with them.
    # (No foreign key: labels already points at cells, and the cycle buys nothing.)
    current_label_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        # "a random unlabelled cell" walks this index from a random point
        Index(
            "ix_cells_unlabelled_random",
            "random_key",
            postgresql_where=text("current_label_id IS NULL"),
            sqlite_where=text("current_label_id IS NULL"),
        ),
    )


class Label(Base):
    """Append-only. ``kind='label'`` gives a value; ``kind='undo'`` cancels the row in ``undoes_id``."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(8), default=LabelKind.LABEL)
    value: Mapped[str | None] = mapped_column(String(64))  # a class name or "unsure"; None for undo
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"), unique=True)
    source: Mapped[str] = mapped_column(String(16), default=LabelSource.MANUAL)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Chosen by the client for each label it sends: a resend after a network error carries the
    # same key and gets the first row back instead of storing a second one.
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    # Who held a live lease on the cell when someone else labelled it (None: nobody else did).
    lease_holder_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", name="fk_labels_lease_holder_id_users"))

    __table_args__ = (
        CheckConstraint(one_of("kind", LabelKind), name="ck_labels_kind"),
        CheckConstraint(
            "(kind = 'label' AND value IS NOT NULL AND undoes_id IS NULL)"
            " OR (kind = 'undo' AND value IS NULL AND undoes_id IS NOT NULL)",
            name="ck_labels_shape",
        ),
        Index("ix_labels_user_id_id", "user_id", "id"),
        Index("ix_labels_cell_id_id", "cell_id", "id"),
        Index("uq_labels_user_idempotency_key", "user_id", "idempotency_key", unique=True),
    )


class QueueEntry(Base):
    __tablename__ = "queue_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id"), unique=True)
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict | None] = mapped_column(JSON)
    leased_to: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_queue_priority", "priority", "id"),)

    @property
    def leased(self) -> bool:
        """Whether someone holds a live lease on the cell now."""
        return self.leased_to is not None and self.lease_until is not None and as_utc(self.lease_until) > utcnow()


class LoginFailure(Base):
    """Failed logins, kept to throttle guessing across processes."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    remote: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


# --- the retraining loop (issue 4) ---------------------------------------------------------


class TrainingRun(Base):
    """One retrain request and its live progress; the worker writes it, the pages poll it."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED, index=True)
    method: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    progress: Mapped[dict | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # No foreign key: model_versions already points at its run, and the cycle buys nothing.
    model_version_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (CheckConstraint(one_of("status", RunStatus), name="ck_training_runs_status"),)


class ModelVersion(Base):
    """A trained model's artefact and validation metrics; at most one is active (serving)."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    artefact_path: Mapped[str] = mapped_column(String(1024))
    class_names: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scoring_status: Mapped[str] = mapped_column(String(16), default=ScoringStatus.IDLE)
    scoring_total: Mapped[int] = mapped_column(Integer, default=0)
    scoring_done: Mapped[int] = mapped_column(Integer, default=0)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "uq_model_versions_one_active",
            "is_active",
            unique=True,
            postgresql_where=text("is_active"),
            sqlite_where=text("is_active"),
        ),
    )


class Prediction(Base):
    """A model version's output for one cell. Pseudo-labels live here, never in ``labels``."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))
    probs: Mapped[list] = mapped_column(JSON)
    predicted: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    entropy: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)
    pseudo_label: Mapped[str | None] = mapped_column(String(64))  # set only when a filter accepted it
    filter_outcome: Mapped[str] = mapped_column(String(24))
    features: Mapped[bytes | None] = mapped_column(LargeBinary)  # float16 penultimate embedding
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("model_version_id", "cell_id", name="uq_predictions_version_cell"),
        CheckConstraint(one_of("filter_outcome", FilterOutcome), name="ck_predictions_outcome"),
        Index("ix_predictions_cell_id", "cell_id"),
    )
