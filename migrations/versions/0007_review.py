"""review, double reading, adjudication, audit: settings, review actions, label provenance, forced password change

Revision ID: 0007
Revises: 0005

Adds and drops columns with plain ALTER TABLE (never batch_alter_table on ``labels``: recreating that
table would drop the append-only triggers of 0003).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
    )
    op.create_table(
        "review_actions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False, server_default="label"),
        sa.Column("undoes_id", sa.Integer(), sa.ForeignKey("review_actions.id"), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind in ('label', 'undo')", name="ck_review_actions_kind"),
    )
    op.create_index("ix_review_actions_user_id_id", "review_actions", ["user_id", "id"])
    op.add_column("labels", sa.Column("action_id", sa.Integer(), nullable=True))
    op.add_column("labels", sa.Column("suggested_label", sa.String(64), nullable=True))
    op.add_column("labels", sa.Column("suggested_confidence", sa.Float(), nullable=True))
    op.create_index("ix_labels_action_id", "labels", ["action_id"])
    if op.get_bind().dialect.name == "postgresql":  # SQLite cannot add a foreign key to an existing table
        op.create_foreign_key("fk_labels_action_id_review_actions", "labels", "review_actions", ["action_id"], ["id"])
    op.add_column("cells", sa.Column("readers_required", sa.Integer(), nullable=True))
    op.add_column("cells", sa.Column("first_reader_id", sa.Integer(), nullable=True))
    op.add_column("cells", sa.Column("awaits_adjudication", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index(
        "ix_cells_awaits_adjudication",
        "cells",
        ["id"],
        postgresql_where=sa.text("awaits_adjudication"),
        sqlite_where=sa.text("awaits_adjudication"),
    )
    op.create_index("ix_cells_slide_id", "cells", ["slide", "id"])
    # the review grid walks the active model's predictions class by class, least confident first
    op.create_index("ix_predictions_review", "predictions", ["model_version_id", "predicted", "confidence", "cell_id"])
    op.add_column("users", sa.Column("must_change_password", sa.Boolean(), nullable=False, server_default=sa.false()))


def _drop_columns(table: str, *columns: str) -> None:
    # Plain DROP COLUMN (SQLite 3.35+ too): a batch table copy would lose the triggers of 0003 on labels
    # and the expression and partial indexes on users and cells.
    for column in columns:
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def downgrade() -> None:
    _drop_columns("users", "must_change_password")
    op.drop_index("ix_predictions_review", table_name="predictions")
    op.drop_index("ix_cells_slide_id", table_name="cells")
    op.drop_index("ix_cells_awaits_adjudication", table_name="cells")
    _drop_columns("cells", "awaits_adjudication", "first_reader_id", "readers_required")
    op.drop_index("ix_labels_action_id", table_name="labels")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("fk_labels_action_id_review_actions", "labels", type_="foreignkey")
    _drop_columns("labels", "suggested_confidence", "suggested_label", "action_id")
    op.drop_index("ix_review_actions_user_id_id", table_name="review_actions")
    op.drop_table("review_actions")
    op.drop_table("settings")
