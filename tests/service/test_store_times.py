"""Every time the store keeps is read back as an aware UTC moment, on SQLite too (SQLite keeps no
zone: a plain DateTime column reads back naive and would be served without an offset)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import DateTime, insert, select

from service.store.tables import UtcDateTime, cds_feedback, metadata, rescore_state
from tests.service.test_caseload_support import sqlite_store


def test_every_store_time_column_is_utc() -> None:
    plain = [
        f"{table.name}.{col.name}"
        for table in metadata.sorted_tables
        for col in table.columns
        if isinstance(col.type, DateTime) and not isinstance(col.type, UtcDateTime)
    ]
    assert plain == []


def test_lease_and_feedback_times_read_back_aware_on_sqlite(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    later = datetime(2026, 12, 7, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    try:
        with store.write() as conn:
            conn.execute(
                insert(rescore_state).values(
                    name="t",
                    done=False,
                    after_episode_id=0,
                    rescored=0,
                    holder="w",
                    lease_until=later,
                    started_at=later,
                    finished_at=later,
                )  # fmt: skip
            )
            conn.execute(
                insert(cds_feedback).values(
                    received_at=later,
                    service_id="s",
                    clinic_id="c",
                    request_id="r",
                    card="k",
                    outcome="accepted",
                    accepted_suggestions=0,
                    commented=False,
                    outcome_time=later,
                )  # fmt: skip
            )
        with store.read() as conn:
            r = rescore_state.c
            lease = conn.execute(select(r.lease_until, r.started_at, r.finished_at)).one()
            f = cds_feedback.c
            feedback = conn.execute(select(f.received_at, f.outcome_time)).one()
    finally:
        store.close()
    for value in (*lease, *feedback):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert value == later
        assert value.astimezone(UTC).hour == 7
