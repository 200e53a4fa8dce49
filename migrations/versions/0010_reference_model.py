"""reference model: model_versions.origin ('local' or 'reference'), at most one reference

Revision ID: 0010
Revises: 0009

A reference model is trained on another lab's cells and installed from a file
(``leukolab reference install``); until the lab's own model is promoted it serves suggestions,
which are marked as the reference's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("origin", sa.String(16), nullable=False, server_default="local"))
    op.create_index(
        "uq_model_versions_one_reference",
        "model_versions",
        ["origin"],
        unique=True,
        postgresql_where=sa.text("origin = 'reference'"),
        sqlite_where=sa.text("origin = 'reference'"),
    )


def downgrade() -> None:
    op.drop_index("uq_model_versions_one_reference", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("origin")
