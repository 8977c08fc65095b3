"""an output file's key covers live rows only; jobs remember when they were resumed

A deleted output keeps its row (so no sync brings the file back) but no longer holds its
name: ComfyUI numbers new files after the highest one it sees, so deleting the newest
output makes the next one reuse its name. `jobs.resumed_at` tells a stop that came
after a resume (pause the job) from one before it (start the instance again).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_LIVE = sa.text("deleted_at IS NULL")
_KEY = ["project_id", "type", "subfolder", "filename"]


def upgrade() -> None:
    op.drop_index("uq_outputs_file", table_name="outputs")
    op.create_index("uq_outputs_file", "outputs", _KEY, unique=True, sqlite_where=_LIVE, postgresql_where=_LIVE)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET resumed_at = created_at")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("resumed_at", nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resumed_at")
    op.drop_index("uq_outputs_file", table_name="outputs")
    op.create_index("uq_outputs_file", "outputs", _KEY, unique=True)
