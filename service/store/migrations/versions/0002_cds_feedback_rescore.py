"""cds feedback and the rescoring lease

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = 128  # service.schemas.ID_MAX_LENGTH
TZ = sa.DateTime(timezone=True)
MAX_FIELD = 4096  # service.cds.schemas.MAX_FIELD


def upgrade() -> None:
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("service_id", sa.String(ID), nullable=False),
        sa.Column("clinic_id", sa.String(ID), nullable=False),
        sa.Column("request_id", sa.String(ID), nullable=False),
        sa.Column("card", sa.String(ID), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("override_system", sa.String(MAX_FIELD), nullable=True),
        sa.Column("override_code", sa.String(256), nullable=True),
        sa.Column("accepted_suggestions", sa.Integer(), nullable=False),
        sa.Column("commented", sa.Boolean(), nullable=False),
        sa.Column("outcome_time", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cds_feedback"),
    )
    op.create_index(
        "ix_cds_feedback_clinic_id_received_at", "cds_feedback", ["clinic_id", "received_at"]
    )
    op.create_table(
        "rescore_state",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("lease_until", TZ, nullable=True),
        sa.Column("after_episode_id", sa.Integer(), nullable=False),
        sa.Column("rescored", sa.Integer(), nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_rescore_state"),
    )


def downgrade() -> None:
    op.drop_table("rescore_state")
    op.drop_index("ix_cds_feedback_clinic_id_received_at", table_name="cds_feedback")
    op.drop_table("cds_feedback")
