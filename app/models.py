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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UNSURE = "unsure"
ROLES = ("cytologist", "admin")


def utcnow() -> datetime:
    return datetime.now(UTC)


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

    __table_args__ = (CheckConstraint("role in ('cytologist', 'admin')", name="ck_users_role"),)

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
    display_png: Mapped[bytes] = mapped_column(LargeBinary)
    display_size: Mapped[int] = mapped_column(Integer)
    model_input: Mapped[bytes] = mapped_column(LargeBinary)  # 64×64×3 uint8, row-major RGB
    source_name: Mapped[str] = mapped_column(String(512))
    slide: Mapped[str | None] = mapped_column(String(128))
    batch: Mapped[str | None] = mapped_column(String(128))
    import_id: Mapped[int | None] = mapped_column(ForeignKey("imports.id"))
    random_key: Mapped[float] = mapped_column(Float, index=True)
    # Cache of the label rows: the newest label of this cell that no undo row points at.
    # Written in the same transaction as the label rows, so it never disagrees with them.
    # (No foreign key: labels already points at cells, and the cycle buys nothing.)
    current_label_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Label(Base):
    """Append-only. ``kind='label'`` gives a value; ``kind='undo'`` cancels the row in ``undoes_id``."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(8), default="label")
    value: Mapped[str | None] = mapped_column(String(64))  # a class name or "unsure"; None for undo
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"), unique=True)
    source: Mapped[str] = mapped_column(String(16), default="manual")  # manual | import
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        CheckConstraint("kind in ('label', 'undo')", name="ck_labels_kind"),
        CheckConstraint(
            "(kind = 'label' AND value IS NOT NULL AND undoes_id IS NULL)"
            " OR (kind = 'undo' AND value IS NULL AND undoes_id IS NOT NULL)",
            name="ck_labels_shape",
        ),
        Index("ix_labels_user_id_id", "user_id", "id"),
        Index("ix_labels_cell_id_id", "cell_id", "id"),
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


class LoginFailure(Base):
    """Failed logins, kept to throttle guessing across processes."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    remote: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
