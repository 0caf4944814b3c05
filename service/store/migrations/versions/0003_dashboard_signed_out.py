"""dashboard sign-outs kept in the store, and an episode's last appointment by index

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_signed_out",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_dashboard_signed_out"),
    )
    op.create_index("ix_dashboard_signed_out_expires_at", "dashboard_signed_out", ["expires_at"])
    op.create_index(
        "ix_sessions_episode_id_session_date", "sessions", ["episode_id", "session_date"]
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_episode_id_session_date", table_name="sessions")
    op.drop_index("ix_dashboard_signed_out_expires_at", table_name="dashboard_signed_out")
    op.drop_table("dashboard_signed_out")
