"""The store's tables (SQLAlchemy Core): episodes, sessions, outcomes, risk scores, idempotency
keys and the per-clinic change counter.

The tables hold what ``POST /v1/risk`` would be sent, so the stored rows of an episode rebuild
exactly the :class:`~service.schemas.RiskRequest` the scorer gets (:mod:`service.store.repository`):
``episodes`` holds the contract's client fields, ``sessions`` one appointment each with its
ratings as the API's JSON object (element name -> rating or null; NULL when the appointment
carried no ratings). The store is treated like the EHR extract it copies.

Risk scores carry no client data beyond the episode they belong to: the probability, band, model
version, the top driver in clinician language and the explanation (which quotes ratings and
counts, never dates or ids). The latest score is also kept on the episode row, so a clinic's
caseload is one indexed query on ``episodes``.

``clinic_state.version`` is bumped in the same transaction as every write that changes a
caseload row (a session, an outcome, a score): a reader compares it for a cheap strong ETag.

The schema is created and changed only by the Alembic migrations in ``migrations/versions``;
``metadata`` here must match their head (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from service.schemas import ID_MAX_LENGTH, TEXT_MAX_LENGTH

#: Constraint names that Alembic can address on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in UTC, read back with its zone on every backend: PostgreSQL's
    ``timestamptz`` keeps it, SQLite keeps none (a naive value would be served as a date-time
    without an offset). Naive values are refused on write."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("store times must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Outcomes of an episode (``POST /v1/clients/{id}/outcome``).
OUTCOMES = ("completed", "dropout")
#: Why a score was stored: a write to the client, or a new model scoring stored episodes.
SCORE_REASONS = ("ingest", "rescore")

clinic_state = Table(
    "clinic_state",
    metadata,
    Column("clinic_id", String(ID_MAX_LENGTH), primary_key=True),
    Column("version", BigInteger, nullable=False, default=0),
)

episodes = Table(
    "episodes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("clinic_id", String(ID_MAX_LENGTH), nullable=False),
    Column("client_id", String(ID_MAX_LENGTH), nullable=False),
    Column("therapist_id", String(ID_MAX_LENGTH), nullable=False),
    Column("intake_date", Date, nullable=False),
    Column("age", Integer, nullable=True),
    Column("gender", String(TEXT_MAX_LENGTH), nullable=True),
    Column("referral_source", String(TEXT_MAX_LENGTH), nullable=True),
    # NULL while the episode is open; 'completed' or 'dropout' once closed (outcomes table).
    Column("outcome", String(16), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # The latest stored score, denormalised for the caseload (risk_scores holds the history).
    Column("latest_score_id", Integer, nullable=True),
    Column("latest_probability", Float, nullable=True),
    Column("latest_band", String(16), nullable=True),
    Column("latest_model_version", String(64), nullable=True),
    Column("latest_scored_at", UtcDateTime(), nullable=True),
    Column("latest_top_driver", String(512), nullable=True),
    UniqueConstraint("clinic_id", "client_id"),
    Index(None, "clinic_id", "latest_probability"),
    Index(None, "clinic_id", "updated_at"),
    Index(None, "clinic_id", "therapist_id"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("episode_id", Integer, ForeignKey("episodes.id", ondelete="CASCADE"), nullable=False),
    Column("session_number", Integer, nullable=False),
    Column("session_date", Date, nullable=False),
    Column("attendance", String(16), nullable=False),
    # The API's ratings object as sent ({element: rating or null}); NULL when none was sent.
    Column("ratings", JSON, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("episode_id", "session_number"),
    # An episode's last appointment in one seek (the dashboard's "last session" column and
    # sort; revision 0003).
    Index(None, "episode_id", "session_date"),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column(
        "episode_id",
        Integer,
        ForeignKey("episodes.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("outcome", String(16), nullable=False),
    Column("outcome_date", Date, nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
)

risk_scores = Table(
    "risk_scores",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("episode_id", Integer, ForeignKey("episodes.id", ondelete="CASCADE"), nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("scored_at", UtcDateTime(), nullable=False),
    # Session number of the appointment the risk is computed at.
    Column("landmark", Integer, nullable=False),
    Column("probability", Float, nullable=False),
    Column("band", String(16), nullable=False),
    Column("top_driver", String(512), nullable=True),
    # models.results.RiskExplanation as JSON (ratings and counts, never dates or ids).
    Column("explanation", JSON, nullable=False),
    Column("reason", String(16), nullable=False),
    Index(None, "episode_id", "scored_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("clinic_id", String(ID_MAX_LENGTH), nullable=False),
    # SHA-256 of the caller's Idempotency-Key (a value the caller chose is never stored).
    Column("key_hash", String(64), nullable=False),
    # SHA-256 of the method, route and body: the same key with another request is refused.
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("clinic_id", "key_hash"),
    Index(None, "created_at"),
)

#: CDS Hooks card feedback (service.cds.feedback): the card's uuid, the outcome and the
#: override reason's coding; no client data, and never the clinician's free-text comment.
cds_feedback = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("service_id", String(ID_MAX_LENGTH), nullable=False),
    Column("clinic_id", String(ID_MAX_LENGTH), nullable=False),
    Column("request_id", String(ID_MAX_LENGTH), nullable=False),
    Column("card", String(ID_MAX_LENGTH), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("override_system", String(4096), nullable=True),
    Column("override_code", String(256), nullable=True),
    Column("accepted_suggestions", Integer, nullable=False),
    Column("commented", Boolean, nullable=False),
    Column("outcome_time", UtcDateTime(), nullable=False),
    Index(None, "clinic_id", "received_at"),
)

#: Rescoring stored episodes with a new champion (service.store.rescore): which version the
#: stored scores are being (or were) brought to, who holds the lease, and how far it got.
rescore_state = Table(
    "rescore_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("model_name", String(256), nullable=True),
    Column("model_version", String(64), nullable=True),
    Column("done", Boolean, nullable=False),
    Column("holder", String(64), nullable=True),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("after_episode_id", Integer, nullable=False),
    Column("rescored", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("finished_at", UtcDateTime(), nullable=True),
)

#: Dashboard sessions signed out before their cookie expires (service.dashboard.session): the
#: SHA-256 of the session id (never the cookie) and when the cookie would have expired, after
#: which the row is purged. In the store, so every worker and a restart refuse the cookie.
dashboard_signed_out = Table(
    "dashboard_signed_out",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index(None, "expires_at"),
)
