"""reason codes on instance records; drop the identity columns nothing writes

The process identity lives in `launcher_state`; `pid_create_time` and `cmdline` were
never written. Batch mode rebuilds the table on SQLite, so the partial unique index
on live ports is dropped first and created again after, with its WHERE clause.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
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
    op.drop_index("uq_comfyui_services_live_port", table_name="comfyui_services")
    with op.batch_alter_table("comfyui_services") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=32), nullable=False, server_default=""))
        batch.drop_column("pid_create_time")
        batch.drop_column("cmdline")
    _live_port_index()


def downgrade() -> None:
    op.drop_index("uq_comfyui_services_live_port", table_name="comfyui_services")
    with op.batch_alter_table("comfyui_services") as batch:
        batch.add_column(sa.Column("cmdline", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("pid_create_time", sa.Float(), nullable=True))
        batch.drop_column("reason")
    _live_port_index()
