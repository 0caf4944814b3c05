"""Stores for the caseload and rescoring tests (SQLite file, or a fresh database on the test
PostgreSQL server) and bulk seeding through SQLAlchemy Core (the benchmark seeds with it too).

No tests here."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, text

from service.store.db import Store
from service.store.tables import clinic_state, episodes, sessions
from tests.service.helpers import SENT_CLIENT_IDS

#: Rows per INSERT executemany (SQLite and psycopg2 both batch them).
CHUNK = 20_000


def sqlite_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.ensure_ready()
    return store


def postgres_store(server_url: str) -> Store:
    """A migrated store on a database of its own on the test server (other tests share it)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"store_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    store = Store(url.set(database=name).render_as_string(hide_password=False))
    store.ensure_ready()
    return store


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), CHUNK):
        yield rows[i : i + CHUNK]


def seed_episodes(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    """Insert episode rows with their ``id`` given (fields not given: defaults below)."""
    now = datetime.now(UTC)
    defaults = {
        "therapist_id": "t-1", "intake_date": date(2026, 1, 5), "age": 30, "gender": None,
        "referral_source": None, "outcome": None, "created_at": now, "updated_at": now,
        "latest_score_id": None, "latest_probability": None, "latest_band": None,
        "latest_model_version": None, "latest_scored_at": None, "latest_top_driver": None,
    }  # fmt: skip
    full = [{**defaults, **r} for r in rows]
    SENT_CLIENT_IDS.update(r["client_id"] for r in full)
    with store.write() as conn:
        for chunk in _chunks(full):
            conn.execute(insert(episodes), list(chunk))
        for clinic in sorted({r["clinic_id"] for r in full}):
            conn.execute(clinic_state.delete().where(clinic_state.c.clinic_id == clinic))
            conn.execute(insert(clinic_state).values(clinic_id=clinic, version=1))
        _advance_sequences(conn, store)


def seed_rows(store: Store, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    with store.write() as conn:
        for chunk in _chunks(rows):
            conn.execute(insert(table), list(chunk))
        _advance_sequences(conn, store)


def score_row(episode_id: int, probability: float, at: datetime, **kw: Any) -> dict[str, Any]:
    """A risk_scores row (the explanation a stand-in: the caseload never reads it)."""
    band = "high" if probability >= 0.5 else "moderate" if probability >= 0.2 else "low"
    return {
        "episode_id": episode_id, "model_name": "m", "model_version": "1", "scored_at": at,
        "landmark": 3, "probability": probability, "band": band, "top_driver": "driver",
        "explanation": {}, "reason": "ingest", **kw,
    }  # fmt: skip


def _advance_sequences(conn: Any, store: Store) -> None:
    """PostgreSQL: ids were given explicitly, so move the serial sequences past them."""
    if store.backend != "postgresql":
        return
    for table in ("episodes", "sessions", "risk_scores"):
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
        )


def seed_cohort(
    store: Store, cohort: Any, clinic: str, *, n: int | None = None, start_id: int = 1
) -> list[str]:
    """Store a simulated cohort's clients as open episodes of ``clinic`` with all their
    appointments (no scores), in bulk. Returns the client ids, in episode id order."""
    clients = cohort.clients if n is None else cohort.clients.iloc[:n]
    ids = np.arange(start_id, start_id + len(clients))
    by_client = dict(zip(clients["client_id"], ids, strict=True))
    seed_episodes(
        store,
        [
            {
                "id": int(i), "clinic_id": clinic, "client_id": str(c.client_id),
                "therapist_id": str(c.therapist_id),
                "intake_date": pd.Timestamp(c.intake_date).date(), "age": int(c.age),
            }
            for i, c in zip(ids, clients.itertuples(index=False), strict=True)
        ],
    )  # fmt: skip
    s = cohort.sessions[cohort.sessions["client_id"].isin(by_client)]
    elements = cohort.profile.element_names
    ratings = s[[f"alliance_{e}" for e in elements]].to_numpy()
    rated = ~np.isnan(ratings)
    now = datetime.now(UTC)
    rows = [
        {
            "episode_id": int(by_client[cid]), "session_number": int(k),
            "session_date": d.date(), "attendance": a,
            "ratings": {e: float(v) for e, v, ok in zip(elements, r, m, strict=True) if ok}
            if m.any() else None,
            "updated_at": now,
        }
        for cid, k, d, a, r, m in zip(
            s["client_id"], s["session_number"], pd.to_datetime(s["session_date"]),
            s["attendance"], ratings, rated, strict=True,
        )
    ]  # fmt: skip
    seed_rows(store, sessions, rows)
    return [str(c) for c in clients["client_id"]]


def days_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)


#: The store backends the store tests run on: SQLite always, PostgreSQL as an integration test.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A migrated store on ``request.param``'s backend (a ``params=BACKENDS`` fixture's)."""
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    return postgres_store(request.getfixturevalue("postgres_server"))
