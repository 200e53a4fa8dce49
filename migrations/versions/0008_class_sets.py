"""class sets: display names, colours and retirement of classes, a class event log, merge label rows,
an OOD score on predictions and its threshold on model versions

Revision ID: 0008
Revises: 0005

``classes.name`` stays the stable key that label rows store (labels are append-only, so a rename
must not change what old rows mean); ``display_name`` is what people see and rename. A merge writes
label rows (source ``merge``) pointing at its ``class_events`` row through ``labels.class_event_id``;
undoing it writes undo rows pointing at the undo event. ``labels`` gains its column with a plain
ALTER TABLE (never a batch copy, which would drop the append-only triggers of 0003).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DEFAULT_COLOURS = {
    "neutrophil": "#1f77b4",
    "lymphocyte": "#2ca02c",
    "monocyte": "#9467bd",
    "eosinophil": "#d62728",
    "basophil": "#8c564b",
    "artefact": "#7f7f7f",
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("classes") as batch:
        batch.add_column(sa.Column("display_name", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("colour", sa.String(length=7), nullable=False, server_default="#7f7f7f"))
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE classes SET display_name = name")
    for name, colour in DEFAULT_COLOURS.items():
        op.execute(
            sa.text("UPDATE classes SET colour = :colour WHERE name = :name").bindparams(colour=colour, name=name)
        )
    with op.batch_alter_table("classes") as batch:
        batch.alter_column("display_name", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_classes_display_name", ["display_name"])

    op.create_table(
        "class_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("target_class_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("undoes_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["class_id"], ["classes.id"], name="fk_class_events_class_id_classes"),
        sa.ForeignKeyConstraint(["target_class_id"], ["classes.id"], name="fk_class_events_target_class_id_classes"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_class_events_user_id_users"),
        sa.ForeignKeyConstraint(["undoes_id"], ["class_events.id"], name="fk_class_events_undoes_id_class_events"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("undoes_id", name="uq_class_events_undoes_id"),
        sa.CheckConstraint(
            "action in ('add', 'rename', 'edit', 'reorder', 'retire', 'restore', 'merge', 'unmerge')",
            name="ck_class_events_action",
        ),
    )
    op.create_index("ix_class_events_class_id", "class_events", ["class_id"])

    # Plain ALTER TABLE on labels (see the docstring); SQLite cannot add a foreign key this way.
    op.add_column("labels", sa.Column("class_event_id", sa.Integer(), nullable=True))
    if postgres:
        op.create_foreign_key(
            "fk_labels_class_event_id_class_events", "labels", "class_events", ["class_event_id"], ["id"]
        )
    op.create_index("ix_labels_class_event_id", "labels", ["class_event_id"])

    op.add_column("predictions", sa.Column("ood_score", sa.Float(), nullable=True))
    op.add_column("model_versions", sa.Column("ood_threshold", sa.Float(), nullable=True))
    op.add_column("model_versions", sa.Column("ood_method", sa.String(length=16), nullable=True))


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("ood_method")
        batch.drop_column("ood_threshold")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("ood_score")
    op.drop_index("ix_labels_class_event_id", table_name="labels")
    if postgres:
        op.drop_constraint("fk_labels_class_event_id_class_events", "labels", type_="foreignkey")
    op.drop_column("labels", "class_event_id")  # SQLite >= 3.35 drops a plain column in place
    op.drop_index("ix_class_events_class_id", table_name="class_events")
    op.drop_table("class_events")
    with op.batch_alter_table("classes") as batch:
        batch.drop_constraint("uq_classes_display_name", type_="unique")
        batch.drop_column("retired_at")
        batch.drop_column("colour")
        batch.drop_column("display_name")
