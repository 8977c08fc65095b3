"""events (audit trail) and automatic-restart bookkeeping

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_project_id", "events", ["project_id"])
    with op.batch_alter_table("comfyui_services") as batch:
        batch.add_column(sa.Column("restart_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("restart_window_start", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_restart_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("comfyui_services") as batch:
        batch.drop_column("next_restart_at")
        batch.drop_column("restart_window_start")
        batch.drop_column("restart_attempts")
    op.drop_index("ix_events_project_id", table_name="events")
    op.drop_index("ix_events_at", table_name="events")
    op.drop_table("events")
