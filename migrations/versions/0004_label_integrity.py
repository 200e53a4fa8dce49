"""labels: an idempotency key per user, and who held the cell's lease when someone else labelled it

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases: a batch rebuild of labels on SQLite would drop its
    # append-only triggers (0003) with the old table.
    op.add_column("labels", sa.Column("idempotency_key", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("labels", sa.Column("lease_holder_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_labels_lease_holder_id_users", "labels", "users", ["lease_holder_id"], ["id"])
    else:  # SQLite adds a column's REFERENCES clause, never a constraint on its own
        op.execute("ALTER TABLE labels ADD COLUMN lease_holder_id INTEGER REFERENCES users (id)")
    # NULL keys (imports, old rows, clients without one) never collide.
    op.create_index("uq_labels_user_idempotency_key", "labels", ["user_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_labels_user_idempotency_key", table_name="labels")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("fk_labels_lease_holder_id_users", "labels", type_="foreignkey")
    op.drop_column("labels", "lease_holder_id")
    op.drop_column("labels", "idempotency_key")
