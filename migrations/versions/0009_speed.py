"""labelling hot path: an index for "the caller's own live lease" in queue/next

Revision ID: 0009
Revises: 0007

``queue/next`` first looks for the caller's own live lease (``leased_to = :user AND lease_until > now``). The
active-learning queue can hold many thousands of entries; without this index that look-up scans them all.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_queue_entries_leased_to", "queue_entries", ["leased_to", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_queue_entries_leased_to", table_name="queue_entries")
