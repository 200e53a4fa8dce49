"""samples and smear fields; cells keep their sample, field, box and centre (issue 11)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Plain columns of cells: a located cell's box (field pixels, x1/y1 exclusive) and centre, and its flags.
PLAIN_COLUMNS = [
    ("box_x0", sa.Integer()),
    ("box_y0", sa.Integer()),
    ("box_x1", sa.Integer()),
    ("box_y1", sa.Integer()),
    ("centre_x", sa.Float()),
    ("centre_y", sa.Float()),
    ("touches_edge", sa.Boolean()),
    ("merged", sa.Boolean()),
]


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("um_per_px", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identifier"),
    )
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("source_name", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("display_jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("display_scale", sa.Float(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=True),
        sa.Column("cell_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"]),
        sa.ForeignKeyConstraint(["import_id"], ["imports.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sample_id", "sha256", name="uq_fields_sample_sha256"),
    )
    op.create_index("ix_fields_sample_id", "fields", ["sample_id"])

    # cells has no triggers, but a batch rebuild on SQLite would lose the partial index's WHERE
    # (reflection does not keep it): plain ADD COLUMN on both databases, as 0004 did for labels.
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("cells", sa.Column("sample_id", sa.Integer(), nullable=True))
        op.add_column("cells", sa.Column("field_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_cells_sample_id_samples", "cells", "samples", ["sample_id"], ["id"])
        op.create_foreign_key("fk_cells_field_id_fields", "cells", "fields", ["field_id"], ["id"])
    else:  # SQLite adds a column's REFERENCES clause, never a constraint on its own
        op.execute("ALTER TABLE cells ADD COLUMN sample_id INTEGER REFERENCES samples (id)")
        op.execute("ALTER TABLE cells ADD COLUMN field_id INTEGER REFERENCES fields (id)")
    for name, type_ in PLAIN_COLUMNS:
        op.add_column("cells", sa.Column(name, type_, nullable=True))
    op.create_index("ix_cells_sample_id", "cells", ["sample_id"])
    op.create_index("ix_cells_field_id", "cells", ["field_id"])


def downgrade() -> None:
    op.drop_index("ix_cells_field_id", table_name="cells")
    op.drop_index("ix_cells_sample_id", table_name="cells")
    for name, _ in reversed(PLAIN_COLUMNS):
        op.drop_column("cells", name)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("fk_cells_field_id_fields", "cells", type_="foreignkey")
        op.drop_constraint("fk_cells_sample_id_samples", "cells", type_="foreignkey")
    # SQLite (3.35+) drops a column whose REFERENCES clause is its own, once no index uses it.
    op.drop_column("cells", "field_id")
    op.drop_column("cells", "sample_id")
    op.drop_index("ix_fields_sample_id", table_name="fields")
    op.drop_table("fields")
    op.drop_table("samples")
