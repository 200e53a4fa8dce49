"""labels are append-only: the database itself refuses UPDATE and DELETE of label rows

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MESSAGE = "labels are append-only: record a new label or an undo row instead"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION labels_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'restrict_violation';
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER labels_append_only BEFORE UPDATE OR DELETE ON labels "
            "FOR EACH ROW EXECUTE FUNCTION labels_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER labels_append_only_{event.lower()} BEFORE {event} ON labels "
                f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER labels_append_only ON labels")
        op.execute("DROP FUNCTION labels_append_only()")
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER labels_append_only_{event}")
