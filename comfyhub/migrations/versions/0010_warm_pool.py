"""warm instances: a comfyui_services row may belong to no project (yet)

The warm pool (services/pool.py) keeps ComfyUIs started for no one; an open claims one.
They are rows of comfyui_services without a project and user, so the partial unique
index on live ports covers them like any other instance.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_LIVE = sa.text("status IN ('starting', 'online')")


def _live_port_index() -> None:
    op.create_index(
        "uq_comfyui_services_live_port",
        "comfyui_services",
        ["port"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def upgrade() -> None:
    # SQLite rebuilds the table in batch mode; the partial index is made again by hand
    # so that its WHERE clause survives the copy.
    op.drop_index("uq_comfyui_services_live_port", table_name="comfyui_services")
    with op.batch_alter_table("comfyui_services") as batch:
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("project_id", existing_type=sa.Integer(), nullable=True)
    _live_port_index()


def downgrade() -> None:
    op.execute("DELETE FROM comfyui_services WHERE project_id IS NULL OR user_id IS NULL")
    op.drop_index("uq_comfyui_services_live_port", table_name="comfyui_services")
    with op.batch_alter_table("comfyui_services") as batch:
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("project_id", existing_type=sa.Integer(), nullable=False)
    _live_port_index()
