"""one-time codes for the hand-off to the instance origin

The main origin redirects a browser to ComfyUI's own origin with a code; the instance
origin trades it once for its own cookie. Codes live a minute at most.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entry_codes",
        sa.Column("code_digest", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["auth_sessions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("code_digest"),
    )
    op.create_index("ix_entry_codes_session_id", "entry_codes", ["session_id"])
    op.create_index("ix_entry_codes_expires_at", "entry_codes", ["expires_at"])


def downgrade() -> None:
    op.drop_table("entry_codes")
