"""The caseload's "main reason" (``top_driver``): the strongest driver that raises the risk, in
the driver's own words, and revision 0004, which takes the old " (raises the risk)" suffix off
the stored rows on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import insert, select

from models.results import LOWERS, RAISES, Driver
from service.store.db import Store
from service.store.repository import NO_RAISING_DRIVER, TOP_DRIVER_MAX, top_driver
from service.store.tables import clinic_state, episodes, risk_scores

LOW_POINT = "Overall alliance reached a low of 7.8 (latest 8.4)"


def _driver(text: str, contribution: float) -> Driver:
    return Driver(
        group="overall", label="Overall alliance", contribution=contribution,
        direction=RAISES if contribution > 0 else LOWERS, text=text,
        evidence={"fact": "low_point"},
    )  # fmt: skip


def test_a_low_point_reads_as_its_own_sentence_with_one_parenthesis() -> None:
    drivers = [
        _driver("Attended 9 of 10 appointments (90%)", -0.40),
        _driver("2 no-shows in the last 3 appointments", 0.10),
        _driver(LOW_POINT, 0.30),
    ]
    reason = top_driver(drivers)
    assert reason == LOW_POINT
    assert "(raises the risk)" not in reason and ") (" not in reason


def test_no_raising_driver_when_every_driver_lowers_the_risk() -> None:
    assert top_driver([_driver("Attended 9 of 10 appointments (90%)", -0.4)]) == NO_RAISING_DRIVER
    assert top_driver([]) is None


def test_a_long_sentence_fits_the_column() -> None:
    reason = top_driver([_driver("x" * (TOP_DRIVER_MAX + 50), 0.2)])
    assert reason is not None and len(reason) == TOP_DRIVER_MAX


def test_the_field_descriptions_say_what_the_text_no_longer_does() -> None:
    """Without the suffix, the JSON field's description carries the meaning."""
    from service.routers.caseload import CaseloadItem
    from service.store_schemas import ScoreEntry

    for model in (CaseloadItem, ScoreEntry):
        described = model.model_json_schema()["properties"]["top_driver"]["description"]
        assert "strongest driver" in described and "raises the risk" in described
        assert NO_RAISING_DRIVER in described


# -- revision 0004 on stored rows ------------------------------------------------------------

SUFFIXED = f"{LOW_POINT} (raises the risk)"
#: Before the suffix was added (the largest driver, no direction): left as it is.
OLDEST = "Attended 9 of 10 appointments (90%)"


def _seed_at_0003(store: Store) -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    texts = [SUFFIXED, NO_RAISING_DRIVER, OLDEST, None]
    store.upgrade("0003")
    with store.engine.begin() as conn:
        conn.execute(insert(clinic_state), [{"clinic_id": "c-1", "version": 5},
                                            {"clinic_id": "c-2", "version": 5}])  # fmt: skip
        for i, text in enumerate(texts, start=1):
            conn.execute(insert(episodes).values(
                id=i, clinic_id="c-1", client_id=f"m-{i}", therapist_id="t-1",
                intake_date=date(2026, 1, 5), created_at=at, updated_at=at, latest_top_driver=text,
            ))  # fmt: skip
            conn.execute(insert(risk_scores).values(
                id=i, episode_id=i, model_name="m", model_version="1", scored_at=at, landmark=3,
                probability=0.3, band="moderate", top_driver=text, explanation={}, reason="ingest",
            ))  # fmt: skip


def _versions(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {r.clinic_id: r.version for r in conn.execute(select(clinic_state))}


def _stored(store: Store) -> tuple[list[str | None], list[str | None]]:
    with store.engine.connect() as conn:
        latest = conn.scalars(select(episodes.c.latest_top_driver).order_by(episodes.c.id))
        history = conn.scalars(select(risk_scores.c.top_driver).order_by(risk_scores.c.id))
        return list(latest), list(history)


def _strips_once(url: str) -> None:
    store = Store(url)
    try:
        _seed_at_0003(store)
        store.upgrade("0004")
        stripped = [LOW_POINT, NO_RAISING_DRIVER, OLDEST, None]
        assert _stored(store) == (stripped, stripped)
        # The caseload's ETag moves where a row changed (c-2 has none), so no poller keeps the
        # old text.
        assert _versions(store) == {"c-1": 6, "c-2": 5}
        # Down again, the text stays: rows stored before the suffix cannot be told apart, and a
        # "(raises the risk)" put on a driver that lowers it would be false.
        store.downgrade("0003")
        assert _stored(store) == (stripped, stripped)
        store.upgrade()
        assert _stored(store) == (stripped, stripped)
    finally:
        store.close()


def test_0004_strips_the_suffix_from_stored_rows_sqlite(tmp_path: Path) -> None:
    _strips_once(f"sqlite:///{tmp_path / 'store.db'}")


def test_0004_strips_the_suffix_from_stored_rows_postgresql(pg_store_url: str) -> None:
    _strips_once(pg_store_url)
