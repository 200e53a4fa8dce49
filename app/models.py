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
    ModelOrigin,
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
    # Set when an admin resets the password: every page but the account page asks for a new one first.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    __table_args__ = (
        CheckConstraint(one_of("role", Role), name="ck_users_role"),
        Index("uq_users_username_lower", func.lower(username), unique=True),
    )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class CellClass(Base):
    """A label a cytologist can give; ``position`` orders buttons and the model's outputs.

    ``name`` is the class's stable key: label rows, predictions and model versions store it, and
    it never changes. People see and rename ``display_name`` (see ``app/classes/service.py``).
    A retired class is hidden from labelling and scoring; its label rows stay."""

    __tablename__ = "classes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(64), unique=True)
    hotkey: Mapped[str] = mapped_column(String(8), unique=True)
    position: Mapped[int] = mapped_column(Integer)
    is_wbc: Mapped[bool] = mapped_column(Boolean, default=True)
    colour: Mapped[str] = mapped_column(String(7), default="#7f7f7f", server_default="#7f7f7f")
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def is_retired(self) -> bool:
        return self.retired_at is not None


CLASS_ACTIONS = ("add", "rename", "edit", "reorder", "retire", "restore", "merge", "unmerge")


class ClassEvent(Base):
    """The class set's audit log: every add, rename, edit, reorder, retire and merge, with who did it.

    A merge's label rows point here through ``Label.action_id``; ``undoes_id`` marks an undo."""

    __tablename__ = "class_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(16))
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id"), index=True)
    target_class_id: Mapped[int | None] = mapped_column(ForeignKey("classes.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    detail: Mapped[dict | None] = mapped_column(JSON)
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("class_events.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        CheckConstraint(
            "action in ('add', 'rename', 'edit', 'reorder', 'retire', 'restore', 'merge', 'unmerge')",
            name="ck_class_events_action",
        ),
    )


class ImportBatch(Base):
    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    source: Mapped[str] = mapped_column(String(512))
    labelled: Mapped[bool] = mapped_column(Boolean, default=False)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sample(Base):
    """One specimen (a slide, a patient's smear): its fields and cells, and its pixel size."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(128), unique=True)
    note: Mapped[str | None] = mapped_column(Text)
    um_per_px: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Field(Base):
    """A smear field image of a sample. Only a display copy is kept (at most ~1600 px on the long side):
    boxes are in the original's pixels, ``display_scale`` maps them onto the copy."""

    __tablename__ = "fields"

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    source_name: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    display_jpeg: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    display_scale: Mapped[float] = mapped_column(Float)  # display px per field px, at most 1
    import_id: Mapped[int | None] = mapped_column(ForeignKey("imports.id"))
    cell_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("sample_id", "sha256", name="uq_fields_sample_sha256"),)


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
    # Under double reading it is the consensus: set only once the required readers agree, or an admin adjudicated.
    current_label_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Provenance of a cell located in a smear field (issue 11); all NULL for a tile import, which
    # may still belong to a sample. The box is the cell's, in field pixels, x1/y1 exclusive.
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"), index=True)
    field_id: Mapped[int | None] = mapped_column(ForeignKey("fields.id"), index=True)
    box_x0: Mapped[int | None] = mapped_column(Integer)
    box_y0: Mapped[int | None] = mapped_column(Integer)
    box_x1: Mapped[int | None] = mapped_column(Integer)
    box_y1: Mapped[int | None] = mapped_column(Integer)
    centre_x: Mapped[float | None] = mapped_column(Float)
    centre_y: Mapped[float | None] = mapped_column(Float)
    touches_edge: Mapped[bool | None] = mapped_column(Boolean)
    merged: Mapped[bool | None] = mapped_column(Boolean)
    # How many readers this cell needs (1 or 2), decided at its first read from the settings and kept.
    readers_required: Mapped[int | None] = mapped_column(Integer)
    # Caches beside current_label_id, recomputed with it: the reader whose read waits for a second, different
    # reader; and whether two readers disagree and an admin must decide.
    first_reader_id: Mapped[int | None] = mapped_column(Integer)
    awaits_adjudication: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    __table_args__ = (
        Index(
            "ix_cells_awaits_adjudication",
            "id",
            postgresql_where=text("awaits_adjudication"),
            sqlite_where=text("awaits_adjudication"),
        ),
        Index("ix_cells_slide_id", "slide", "id"),
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
    source: Mapped[str] = mapped_column(String(16), default=LabelSource.MANUAL)  # see app.statuses.LabelSource
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Chosen by the client for each label it sends: a resend after a network error carries the
    # same key and gets the first row back instead of storing a second one.
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    # Who held a live lease on the cell when someone else labelled it (None: nobody else did).
    lease_holder_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", name="fk_labels_lease_holder_id_users"))
    # The bulk review action this row belongs to (undone as one); None for single labels.
    action_id: Mapped[int | None] = mapped_column(
        ForeignKey("review_actions.id", name="fk_labels_action_id_review_actions"), index=True
    )
    # The active model's suggestion when the label was given, for the audit trail (None: there was none).
    suggested_label: Mapped[str | None] = mapped_column(String(64))
    suggested_confidence: Mapped[float | None] = mapped_column(Float)
    # The class event (a merge, or its undo) that wrote this row; None for labels people gave.
    class_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("class_events.id", name="fk_labels_class_event_id_class_events"), index=True
    )

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


class ReviewAction(Base):
    """One bulk action of the review grid; its label rows carry its id. ``kind='undo'`` undoes ``undoes_id``."""

    __tablename__ = "review_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(8), default="label", server_default="label")
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("review_actions.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        CheckConstraint("kind in ('label', 'undo')", name="ck_review_actions_kind"),
        Index("ix_review_actions_user_id_id", "user_id", "id"),
    )


class Setting(Base):
    """An admin setting (``readers_per_cell``, ``double_read_fraction``) as a JSON value."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[object] = mapped_column(JSON)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


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

    __table_args__ = (
        Index("ix_queue_priority", "priority", "id"),
        # queue/next's "the caller's own live lease"
        Index("ix_queue_entries_leased_to", "leased_to", "lease_until"),
    )

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
    # "Unlike any known class": the OOD method the model chose and its threshold (ml.ood).
    ood_threshold: Mapped[float | None] = mapped_column(Float)
    ood_method: Mapped[str | None] = mapped_column(String(16))
    # "reference": installed from another lab's data (leukolab reference install); its suggestions
    # are marked as the reference model's. At most one is installed.
    origin: Mapped[str] = mapped_column(String(16), default=ModelOrigin.LOCAL, server_default=ModelOrigin.LOCAL.value)

    __table_args__ = (
        Index(
            "uq_model_versions_one_reference",
            "origin",
            unique=True,
            postgresql_where=text("origin = 'reference'"),
            sqlite_where=text("origin = 'reference'"),
        ),
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
    ood_score: Mapped[float | None] = mapped_column(Float)  # higher: less like any known class
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("model_version_id", "cell_id", name="uq_predictions_version_cell"),
        CheckConstraint(one_of("filter_outcome", FilterOutcome), name="ck_predictions_outcome"),
        Index("ix_predictions_cell_id", "cell_id"),
        Index("ix_predictions_review", "model_version_id", "predicted", "confidence", "cell_id"),
    )
