"""authentication: case-insensitive unique user names, a per-user session version, login failures by client

Revision ID: 0005
Revises: 0003

Existing user names that differ only by case (``Admin`` beside ``admin``) make the upgrade stop with a
message naming them: rename or remove one of each pair (e.g. ``UPDATE users SET username = 'admin2' WHERE
id = ...``), then run ``leukolab db upgrade`` again. Nothing is renamed silently, since a user name is
what people log in with.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    clashes = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT lower(username) AS name, count(*) FROM users GROUP BY lower(username) "
                "HAVING count(*) > 1 ORDER BY lower(username)"
            )
        )
        .all()
    )
    if clashes:
        names = ", ".join(name for name, _ in clashes)
        raise RuntimeError(
            f"user names must be unique regardless of case, but these exist more than once: {names}. "
            "Rename or delete the extra accounts, then run `leukolab db upgrade` again."
        )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    op.create_index("ix_login_failures_remote", "login_failures", ["remote"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_remote", table_name="login_failures")
    op.drop_index("uq_users_username_lower", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_version")
