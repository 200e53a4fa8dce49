"""foundation: users, classes, cells, labels, queue

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The five WBC classes of PBC, plus `artefact` (not a WBC, or unusable).
DEFAULT_CLASSES = [
    ("neutrophil", "1"),
    ("lymphocyte", "2"),
    ("monocyte", "3"),
    ("eosinophil", "4"),
    ("basophil", "5"),
    ("artefact", "0"),
]


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "classes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("hotkey", sa.String(length=8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("is_wbc", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hotkey"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("remote", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_failures_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_login_failures_username"), ["username"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role in ('cytologist', 'admin')", name="ck_users_role"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("labelled", sa.Boolean(), nullable=False),
        sa.Column("imported", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("display_png", sa.LargeBinary(), nullable=False),
        sa.Column("display_size", sa.Integer(), nullable=False),
        sa.Column("model_input", sa.LargeBinary(), nullable=False),
        sa.Column("source_name", sa.String(length=512), nullable=False),
        sa.Column("slide", sa.String(length=128), nullable=True),
        sa.Column("batch", sa.String(length=128), nullable=True),
        sa.Column("import_id", sa.Integer(), nullable=True),
        sa.Column("random_key", sa.Float(), nullable=False),
        sa.Column("current_label_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["imports.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    with op.batch_alter_table("cells", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cells_current_label_id"), ["current_label_id"], unique=False)
        batch_op.create_index(
            "ix_cells_unlabelled_random",
            ["random_key"],
            unique=False,
            postgresql_where=sa.text("current_label_id IS NULL"),
            sqlite_where=sa.text("current_label_id IS NULL"),
        )

    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=True),
        sa.Column("undoes_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(kind = 'label' AND value IS NOT NULL AND undoes_id IS NULL) OR (kind = 'undo' AND value IS NULL AND undoes_id IS NOT NULL)",
            name="ck_labels_shape",
        ),
        sa.CheckConstraint("kind in ('label', 'undo')", name="ck_labels_kind"),
        sa.ForeignKeyConstraint(
            ["cell_id"],
            ["cells.id"],
        ),
        sa.ForeignKeyConstraint(
            ["undoes_id"],
            ["labels.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("undoes_id"),
    )
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.create_index("ix_labels_cell_id_id", ["cell_id", "id"], unique=False)
        batch_op.create_index("ix_labels_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "queue_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("leased_to", sa.Integer(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cell_id"],
            ["cells.id"],
        ),
        sa.ForeignKeyConstraint(
            ["leased_to"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cell_id"),
    )
    with op.batch_alter_table("queue_entries", schema=None) as batch_op:
        batch_op.create_index("ix_queue_priority", ["priority", "id"], unique=False)

    classes = sa.table(
        "classes",
        sa.column("name", sa.String),
        sa.column("hotkey", sa.String),
        sa.column("position", sa.Integer),
        sa.column("is_wbc", sa.Boolean),
    )
    op.bulk_insert(
        classes,
        [
            {"name": name, "hotkey": hotkey, "position": position, "is_wbc": name != "artefact"}
            for position, (name, hotkey) in enumerate(DEFAULT_CLASSES)
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("queue_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_queue_priority")

    op.drop_table("queue_entries")
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_index("ix_labels_user_id_id")
        batch_op.drop_index("ix_labels_cell_id_id")

    op.drop_table("labels")
    with op.batch_alter_table("cells", schema=None) as batch_op:
        batch_op.drop_index("ix_cells_unlabelled_random")
        batch_op.drop_index(batch_op.f("ix_cells_current_label_id"))

    op.drop_table("cells")
    op.drop_table("imports")
    op.drop_table("users")
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_failures_username"))
        batch_op.drop_index(batch_op.f("ix_login_failures_created_at"))

    op.drop_table("login_failures")
    op.drop_table("classes")
