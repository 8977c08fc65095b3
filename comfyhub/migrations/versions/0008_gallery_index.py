"""a partial index for the gallery: a project's outputs not in the trash, newest first

Measured at 100,000 outputs: a page of 100 with its count from ~31/42 ms (SQLite /
PostgreSQL) to ~12/17 ms (bench/outputs.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_outputs_project_live",
        "outputs",
        ["project_id", "created_at", "id", "deleted_at"],
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_outputs_project_live", table_name="outputs")
