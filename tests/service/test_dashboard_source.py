"""The dashboard's store reads (service.dashboard.source) on SQLite and PostgreSQL: the caseload
page with each row's score history and last appointment, the clinic's therapists, and a client
with appointments, drivers and history; another clinic's client is missing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import func, select, update

from service.dashboard import source
from service.store.caseload import CaseloadFilters
from service.store.cursors import CursorSeal
from service.store.db import Store
from service.store.tables import episodes, risk_scores, sessions
from tests.service.test_caseload_support import (
    BACKENDS,
    backend_store,
    days_ago,
    score_row,
    seed_episodes,
    seed_rows,
)

CLINIC = "clinic-dash"
SEAL = CursorSeal(bytes(range(32)))
DRIVER = {"label": "Trust and rapport", "text": "Trust rated 5.0 at session 3",
          "direction": "raises risk", "focus": "Rebuild trust."}  # fmt: skip


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Iterator[Store]:
    s = backend_store(request, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _seed(store: Store) -> None:
    """Episodes 1-3 of CLINIC (3 closed), 4 of another clinic; 1 has 15 scores, 2 has one."""
    seed_episodes(store, [
        {"id": 1, "clinic_id": CLINIC, "client_id": "dash-a", "therapist_id": "t-2"},
        {"id": 2, "clinic_id": CLINIC, "client_id": "dash-b", "therapist_id": "t-1"},
        {"id": 3, "clinic_id": CLINIC, "client_id": "dash-c", "therapist_id": "t-9",
         "outcome": "dropout"},
        {"id": 4, "clinic_id": "clinic-other", "client_id": "dash-d", "therapist_id": "t-1"},
    ])  # fmt: skip
    seed_rows(store, sessions, [
        {"episode_id": 1, "session_number": k, "session_date": date(2026, 3, k),
         "attendance": "attended" if k != 2 else "no_show",
         "ratings": None if k == 2 else {"trust": 8.0 - k, "goals": 7.5}, "updated_at": days_ago(1)}
        for k in (1, 2, 3)
    ] + [{"episode_id": 2, "session_number": 1, "session_date": date(2026, 2, 1),
          "attendance": "attended", "ratings": {"trust": 9.0}, "updated_at": days_ago(1)}])  # fmt: skip
    scores = [score_row(1, 0.1 + 0.02 * i, days_ago(20 - i)) for i in range(15)]
    scores.append(score_row(2, 0.3, days_ago(2), explanation={"drivers": [DRIVER]}))
    seed_rows(store, risk_scores, scores)
    with store.write() as conn:
        for episode, p in ((1, 0.38), (2, 0.3)):
            latest = conn.execute(risk_scores.select().where(risk_scores.c.episode_id == episode)
                                  .order_by(risk_scores.c.id.desc()).limit(1)).first()  # fmt: skip
            assert latest is not None
            conn.execute(update(episodes).where(episodes.c.id == episode).values(
                latest_score_id=latest.id, latest_probability=p, latest_band="moderate",
                latest_model_version="1", latest_scored_at=latest.scored_at,
                latest_top_driver="driver"))  # fmt: skip


def test_caseload_page_with_history_and_last_session(store: Store) -> None:
    _seed(store)
    page = source.read_caseload(store, CLINIC, CaseloadFilters(), None, 10, seal=SEAL)
    assert [r.client_id for r in page.rows] == ["dash-a", "dash-b"]  # open, this clinic
    a, b = page.rows
    expected = [round(0.1 + 0.02 * i, 6) for i in range(15 - source.SPARK_POINTS, 15)]
    assert [round(p, 6) for p in a.history] == expected  # the latest ones, oldest first
    assert a.last_session == date(2026, 3, 3) and b.last_session == date(2026, 2, 1)
    assert b.history == (0.3,)
    assert page.therapists == ("t-1", "t-2")
    only = source.read_caseload(
        store, CLINIC, CaseloadFilters(therapist_id="t-1"), None, 10, seal=SEAL
    )
    assert [r.client_id for r in only.rows] == ["dash-b"]


def test_client_record(store: Store) -> None:
    _seed(store)
    record = source.read_client(store, CLINIC, "dash-b")
    assert record is not None
    assert record.probability == 0.3 and record.model_version == "1"
    assert [(d.label, d.raises, d.focus) for d in record.drivers] == [
        ("Trust and rapport", True, "Rebuild trust.")
    ]
    a = source.read_client(store, CLINIC, "dash-a")
    assert a is not None
    assert [(x.session_number, x.attendance) for x in a.appointments] == [
        (1, "attended"),
        (2, "no_show"),
        (3, "attended"),
    ]
    assert a.appointments[1].ratings == {} and a.appointments[2].ratings["trust"] == 5.0
    assert len(a.history) == source.SPARK_POINTS
    assert source.read_client(store, CLINIC, "dash-d") is None  # another clinic's
    assert source.read_client(store, CLINIC, "nobody") is None


def test_change_and_trend_compare_one_model_version(store: Store) -> None:
    """After a promotion rescored the client, the week's change and the sparkline do not mix
    the old model's scores with the new one's (the step would be calibration, not the client)."""
    seed_episodes(store, [
        {"id": 1, "clinic_id": CLINIC, "client_id": "promoted"},
        {"id": 2, "clinic_id": CLINIC, "client_id": "same-model"},
    ])  # fmt: skip
    old = [score_row(1, 0.2 + 0.01 * i, days_ago(20 - i)) for i in range(10)]  # v1, to 11 d ago
    new = [score_row(1, p, days_ago(d), model_version="2", reason="rescore")
           for p, d in ((0.5, 3), (0.55, 1))]  # fmt: skip
    same = [score_row(2, p, days_ago(d)) for p, d in ((0.3, 10), (0.4, 1))]
    seed_rows(store, risk_scores, old + new + same)
    with store.write() as conn:
        for episode, p, version in ((1, 0.55, "2"), (2, 0.4, "1")):
            last = conn.execute(select(func.max(risk_scores.c.id)).where(
                risk_scores.c.episode_id == episode)).scalar_one()  # fmt: skip
            conn.execute(update(episodes).where(episodes.c.id == episode).values(
                latest_score_id=last, latest_probability=p, latest_band="moderate",
                latest_model_version=version, latest_scored_at=days_ago(1)))  # fmt: skip
    page = source.read_caseload(store, CLINIC, CaseloadFilters(), None, 10, seal=SEAL)
    rows = {r.client_id: r for r in page.rows}
    assert rows["promoted"].change_7d is None  # no score of model 2 a week ago
    assert rows["promoted"].history == (0.5, 0.55)  # the trend starts at model 2
    assert rows["same-model"].change_7d == pytest.approx(0.1)
    assert rows["same-model"].history == (0.3, 0.4)
    record = source.read_client(store, CLINIC, "promoted")
    assert record is not None and record.history == (0.5, 0.55)
