"""store schema: episodes, sessions, outcomes, risk scores, idempotency keys, clinic state

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 128  # service.schemas.ID_MAX_LENGTH
TEXT = 64  # service.schemas.TEXT_MAX_LENGTH
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "clinic_state",
        sa.Column("clinic_id", sa.String(ID), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("clinic_id", name="pk_clinic_state"),
    )
    op.create_table(
        "episodes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("clinic_id", sa.String(ID), nullable=False),
        sa.Column("client_id", sa.String(ID), nullable=False),
        sa.Column("therapist_id", sa.String(ID), nullable=False),
        sa.Column("intake_date", sa.Date(), nullable=False),
        sa.Column("age", sa.Integer(), nullable=True),
        sa.Column("gender", sa.String(TEXT), nullable=True),
        sa.Column("referral_source", sa.String(TEXT), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("latest_score_id", sa.Integer(), nullable=True),
        sa.Column("latest_probability", sa.Float(), nullable=True),
        sa.Column("latest_band", sa.String(16), nullable=True),
        sa.Column("latest_model_version", sa.String(64), nullable=True),
        sa.Column("latest_scored_at", TZ, nullable=True),
        sa.Column("latest_top_driver", sa.String(512), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_episodes"),
        sa.UniqueConstraint("clinic_id", "client_id", name="uq_episodes_clinic_id_client_id"),
    )
    op.create_index(
        "ix_episodes_clinic_id_latest_probability",
        "episodes",
        ["clinic_id", "latest_probability"],
    )
    op.create_index("ix_episodes_clinic_id_updated_at", "episodes", ["clinic_id", "updated_at"])
    op.create_index("ix_episodes_clinic_id_therapist_id", "episodes", ["clinic_id", "therapist_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("session_number", sa.Integer(), nullable=False),
        sa.Column("session_date", sa.Date(), nullable=False),
        sa.Column("attendance", sa.String(16), nullable=False),
        sa.Column("ratings", sa.JSON(), nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["episodes.id"],
            name="fk_sessions_episode_id_episodes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint(
            "episode_id", "session_number", name="uq_sessions_episode_id_session_number"
        ),
    )
    op.create_table(
        "outcomes",
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_date", sa.Date(), nullable=False),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["episodes.id"],
            name="fk_outcomes_episode_id_episodes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("episode_id", name="pk_outcomes"),
    )
    op.create_table(
        "risk_scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("scored_at", TZ, nullable=False),
        sa.Column("landmark", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("band", sa.String(16), nullable=False),
        sa.Column("top_driver", sa.String(512), nullable=True),
        sa.Column("explanation", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["episodes.id"],
            name="fk_risk_scores_episode_id_episodes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_risk_scores"),
    )
    op.create_index(
        "ix_risk_scores_episode_id_scored_at", "risk_scores", ["episode_id", "scored_at"]
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("clinic_id", sa.String(ID), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
        sa.UniqueConstraint("clinic_id", "key_hash", name="uq_idempotency_keys_clinic_id_key_hash"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_risk_scores_episode_id_scored_at", table_name="risk_scores")
    op.drop_table("risk_scores")
    op.drop_table("outcomes")
    op.drop_table("sessions")
    op.drop_index("ix_episodes_clinic_id_therapist_id", table_name="episodes")
    op.drop_index("ix_episodes_clinic_id_updated_at", table_name="episodes")
    op.drop_index("ix_episodes_clinic_id_latest_probability", table_name="episodes")
    op.drop_table("episodes")
    op.drop_table("clinic_state")
