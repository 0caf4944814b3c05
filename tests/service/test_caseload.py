"""The caseload query (service.store.caseload) on SQLite and PostgreSQL: open episodes only,
probability descending, keyset pages that list every row once (also when a page's last row
changes before the next page), sealed cursors for the other orders, filters, the change since
last week, and an ETag that moves with every write and with nothing else."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import insert, update

from service.store.caseload import (
    BY_RISK,
    CURSOR_MAX_LENGTH,
    SORT_KEYS,
    CaseloadFilters,
    CaseloadOrder,
    CursorError,
    caseload_etag,
    caseload_page,
    decode_cursor,
    encode_cursor,
    week_cutoff,
)
from service.store.cursors import CursorSeal
from service.store.db import Store
from service.store.tables import clinic_state, episodes, risk_scores, sessions
from tests.service.test_caseload_support import (
    BACKENDS,
    backend_store,
    days_ago,
    score_row,
    seed_episodes,
    seed_rows,
)

CLINIC = "clinic-cl"
SEAL = CursorSeal(bytes(range(32)))


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Iterator[Store]:
    s = backend_store(request, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _episode(i: int, p: float | None, **kw) -> dict:
    at = days_ago(1)
    scored = {} if p is None else {
        "latest_probability": p, "latest_band": "high" if p >= 0.5 else "low",
        "latest_model_version": "1", "latest_scored_at": at, "latest_top_driver": f"driver {i}",
    }  # fmt: skip
    return {"id": i, "clinic_id": CLINIC, "client_id": f"cl-{i:04d}", **scored, **kw}


def _all_pages(
    store: Store,
    filters: CaseloadFilters | None = None,
    limit: int = 3,
    order: CaseloadOrder = BY_RISK,
) -> list:
    rows, cursor, pages = [], None, 0
    while True:
        with store.read() as conn:
            page = caseload_page(
                conn, CLINIC, filters or CaseloadFilters(), cursor, limit, order=order, seal=SEAL
            )
        rows.extend(page.rows)
        pages += 1
        assert len(page.rows) <= limit
        cursor = page.next_cursor
        if cursor is None:
            return rows
        assert pages < 100


def test_pages_list_open_episodes_by_risk_each_once(store: Store) -> None:
    # Ties on probability across page boundaries, unscored episodes, a closed one, another
    # clinic's.
    ps = [0.9, 0.5, 0.5, 0.5, 0.5, 0.2, None, 0.1, None]
    seed_episodes(store, [_episode(i + 1, p) for i, p in enumerate(ps)] + [
        _episode(20, 0.99, outcome="dropout"),
        {**_episode(21, 0.95), "clinic_id": "other", "client_id": "other-1"},
    ])  # fmt: skip
    rows = _all_pages(store, limit=3)
    assert [r.client_id for r in rows] == [
        "cl-0001", "cl-0005", "cl-0004", "cl-0003", "cl-0002", "cl-0006", "cl-0008",
        "cl-0009", "cl-0007",
    ]  # fmt: skip
    assert [r.probability for r in rows] == [0.9, 0.5, 0.5, 0.5, 0.5, 0.2, 0.1, None, None]
    assert rows[0].model_version == "1" and rows[0].top_driver == "driver 1"
    assert rows[0].scored_at is not None and rows[0].scored_at.tzinfo is not None
    for limit in (1, 2, 4, 9, 10):  # every page size lists the same rows in the same order
        assert [r.client_id for r in _all_pages(store, limit=limit)] == [r.client_id for r in rows]


def test_every_order_sorts_the_whole_caseload_across_pages(store: Store) -> None:
    # Eleven open episodes paged 3 at a time: a per-page sort would order each page only.
    # Values repeat (ties across page boundaries) and some rows have none (no score, no score a
    # week ago, no appointment): those come last in both orders.
    cutoff = week_cutoff()
    ps = [0.3, 0.8, None, 0.5, 0.1, 0.8, 0.6, None, 0.2, 0.5, 0.7]
    therapists = ["t-c", "t-a", "t-b", "t-a", "t-c", "t-b", "t-a", "t-c", "t-b", "t-a", "t-c"]
    week_old = {1: 0.5, 2: 0.1, 4: 0.5, 6: 0.9, 7: 0.2, 9: 0.4, 11: 0.3}
    last_day = {i: date(2026, 11, 1 + (i * 7) % 12) for i in range(1, 12) if i not in (5, 8)}
    n = len(ps)
    seed_episodes(store, [
        _episode(i, p, therapist_id=t, client_id=f"cl-{(i * 5) % n:04d}")
        for i, (p, t) in enumerate(zip(ps, therapists, strict=True), start=1)
    ])  # fmt: skip
    seed_rows(store, risk_scores, [
        score_row(i, q, cutoff - timedelta(days=1)) for i, q in week_old.items()
    ])  # fmt: skip
    seed_rows(store, sessions, [
        {"episode_id": i, "session_number": k, "session_date": day - timedelta(days=7 * (2 - k)),
         "attendance": "attended", "ratings": None, "updated_at": days_ago(1)}
        for i, day in last_day.items() for k in (1, 2)
    ])  # fmt: skip
    rows = {r.client_id: r for r in _all_pages(store, limit=n)}

    def expected(sort: str, descending: bool) -> list[str]:
        def value(i: int) -> object:
            p = ps[i - 1]
            if sort == "probability":
                return p
            if sort == "change":
                return None if p is None or i not in week_old else p - week_old[i]
            if sort == "therapist":
                return therapists[i - 1]
            if sort == "client":
                return f"cl-{(i * 5) % n:04d}"
            return last_day.get(i)

        ids = range(1, n + 1)
        valued = sorted((i for i in ids if value(i) is not None),
                        key=lambda i: (value(i), i), reverse=descending)  # fmt: skip
        valueless = sorted((i for i in ids if value(i) is None), reverse=descending)
        return [f"cl-{(i * 5) % n:04d}" for i in valued + valueless]

    for sort in SORT_KEYS:
        for descending in (True, False):
            order = CaseloadOrder(sort, descending)  # type: ignore[arg-type]
            for limit in (3, n):
                listed = [r.client_id for r in _all_pages(store, limit=limit, order=order)]
                assert listed == expected(sort, descending), (sort, descending, limit)
    assert rows["cl-0010"].change_since_last_week == pytest.approx(0.7)  # episode 2


def test_order_cursors_are_sealed_and_hold_to_their_order_and_clinic(store: Store) -> None:
    seed_episodes(store, [
        _episode(1, 0.4, therapist_id="t-secret"),
        _episode(2, 0.3),
        {**_episode(3, 0.2), "clinic_id": "other", "client_id": "other-1"},
        {**_episode(4, 0.1), "clinic_id": "other", "client_id": "other-2"},
    ])  # fmt: skip
    by_client = CaseloadOrder("client", False)
    by_therapist = CaseloadOrder("therapist", False)

    def page(cursor: str | None, clinic: str = CLINIC, order: CaseloadOrder = by_client,
             seal: CursorSeal = SEAL):  # fmt: skip
        return caseload_page(conn, clinic, CaseloadFilters(), cursor, 1, order=order, seal=seal)

    with store.read() as conn:
        cursor = page(None).next_cursor
        assert cursor is not None and len(cursor) <= CURSOR_MAX_LENGTH
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        assert b"cl-" not in raw and b"t-secret" not in raw  # sealed: nothing readable
        assert page(cursor).rows[0].client_id == "cl-0002"
        assert page(page(None, order=by_therapist).next_cursor, order=by_therapist).rows
        other = page(None, clinic="other").next_cursor
        tampered = cursor[:20] + ("A" if cursor[20] != "A" else "B") + cursor[21:]
        refused = [
            lambda: page(cursor, order=by_therapist),  # another order's cursor
            lambda: page(cursor, order=CaseloadOrder("client", True)),  # the other direction
            lambda: page(cursor, order=BY_RISK),
            lambda: page(encode_cursor(SEAL, CLINIC, BY_RISK, 0.4, 1)),  # the risk order's
            lambda: page(other),  # issued to another clinic
            lambda: page(cursor, clinic="other"),
            lambda: page(tampered),
            lambda: page(cursor[:-1]),
            lambda: page(cursor, seal=CursorSeal(bytes(32))),  # another key (a rotated audit key)
            lambda: page("garbage"),
            lambda: page(""),
        ]
        for attempt in refused:
            with pytest.raises(CursorError, match="^not a cursor"):
                attempt()


def test_the_longest_ids_fit_the_cursor_bound(store: Store) -> None:
    longest = "\U0010ffff" * 127  # four UTF-8 bytes each
    seed_episodes(store, [_episode(i, 0.5, client_id=longest + str(i), therapist_id=longest + "t")
                          for i in (1, 2)])  # fmt: skip
    for sort in ("client", "therapist"):
        with store.read() as conn:
            order = CaseloadOrder(sort, True)  # type: ignore[arg-type]
            cursor = caseload_page(
                conn, CLINIC, CaseloadFilters(), None, 1, order=order, seal=SEAL
            ).next_cursor
        assert cursor is not None and len(cursor) <= CURSOR_MAX_LENGTH
    assert CURSOR_MAX_LENGTH < 1024


#: Six open episodes, each with a distinct value in every order: a probability (one week ago
#: 0.05, so the change is distinct too), a therapist, a client id and one appointment.
_MOVING = [_episode(i, i / 10, therapist_id=f"t-{i:02d}") for i in range(1, 7)]


def _set_key(store: Store, sort: str, episode_id: int, high: bool) -> None:
    """Move one episode's sort key past every other's: to the highest value, or the lowest."""
    e = episodes.c
    with store.write() as conn:
        if sort in ("probability", "change"):
            values = {"latest_probability": 0.99 if high else 0.01}
        elif sort == "therapist":
            values = {"therapist_id": "z" if high else "a"}
        elif sort == "client":
            values = {"client_id": "zz" if high else "a"}
        else:
            conn.execute(insert(sessions).values(
                episode_id=episode_id, session_number=2,
                session_date=date(2026, 12, 31) if high else date(2026, 1, 1),
                attendance="attended", ratings=None, updated_at=days_ago(0),
            ))  # fmt: skip
            if not high:
                conn.execute(sessions.delete().where(
                    sessions.c.episode_id == episode_id, sessions.c.session_number == 1
                ))  # fmt: skip
            return
        conn.execute(update(episodes).where(e.id == episode_id).values(**values))


@pytest.mark.parametrize("descending", [True, False], ids=["desc", "asc"])
@pytest.mark.parametrize("sort", SORT_KEYS)
@pytest.mark.parametrize("to_seen", [True, False], ids=["to_a_seen_page", "to_a_later_page"])
def test_a_page_whose_last_row_changes_skips_and_repeats_no_other_row(
    store: Store, sort: str, descending: bool, to_seen: bool
) -> None:
    # The page's last row gets a new appointment, another therapist, a new score: the next page
    # starts where the first one ended all the same. The row itself shows at its old place or
    # its new one: once when it moved to a page already seen, twice when it moved ahead (as in
    # any keyset paging).
    seed_episodes(store, _MOVING)
    seed_rows(store, risk_scores, [
        score_row(i, 0.05, week_cutoff() - timedelta(days=1)) for i in range(1, 7)
    ])  # fmt: skip
    seed_rows(store, sessions, [
        {"episode_id": i, "session_number": 1, "session_date": date(2026, 11, i),
         "attendance": "attended", "ratings": None, "updated_at": days_ago(1)}
        for i in range(1, 7)
    ])  # fmt: skip
    order = CaseloadOrder(sort, descending)  # type: ignore[arg-type]
    with store.read() as conn:
        first = caseload_page(conn, CLINIC, CaseloadFilters(), None, 3, order=order, seal=SEAL)
    moved = first.rows[-1].client_id
    _set_key(store, sort, int(moved[-4:]), high=descending == to_seen)
    listed, cursor = [r.client_id for r in first.rows], first.next_cursor
    while cursor is not None:
        with store.read() as conn:
            page = caseload_page(conn, CLINIC, CaseloadFilters(), cursor, 3, order=order, seal=SEAL)
        listed += [r.client_id for r in page.rows]
        cursor = page.next_cursor
        assert len(listed) <= 12
    # A client renamed by the test ("a", "zz") is the moved one.
    names = [moved if c in ("a", "zz") else c for c in listed]
    others = [c for c in names if c != moved]
    assert sorted(others) == sorted({f"cl-{i:04d}" for i in range(1, 7)} - {moved}), names
    assert names.count(moved) == (1 if to_seen else 2), names


def test_filters(store: Store) -> None:
    old = days_ago(30)
    seed_episodes(store, [
        _episode(1, 0.8, therapist_id="t-a", updated_at=old),
        _episode(2, 0.1, therapist_id="t-b", updated_at=old),
        _episode(3, 0.7, therapist_id="t-b", updated_at=old, latest_scored_at=old),
        _episode(4, None, therapist_id="t-b"),
    ])  # fmt: skip
    ids = lambda f: [r.client_id for r in _all_pages(store, f)]  # noqa: E731
    assert ids(CaseloadFilters(therapist_id="t-b")) == ["cl-0003", "cl-0002", "cl-0004"]
    assert ids(CaseloadFilters(band="high")) == ["cl-0001", "cl-0003"]
    assert ids(CaseloadFilters(band="low", therapist_id="t-b")) == ["cl-0002"]
    # Changed in the last week: a new score (1, 2) or new data (4); 3 changed a month ago.
    assert ids(CaseloadFilters(changed_since=days_ago(7))) == ["cl-0001", "cl-0002", "cl-0004"]


def test_change_since_last_week(store: Store) -> None:
    cutoff = week_cutoff()
    seed_episodes(store, [_episode(1, 0.6), _episode(2, 0.3), _episode(3, 0.4)])
    seed_rows(store, risk_scores, [
        score_row(1, 0.25, cutoff - timedelta(days=3)),
        score_row(1, 0.2, cutoff - timedelta(hours=1)),  # the latest at or before the cutoff
        score_row(1, 0.5, cutoff + timedelta(days=2)),
        score_row(1, 0.6, days_ago(1)),
        score_row(2, 0.3, cutoff + timedelta(hours=1)),  # nothing that old
        score_row(3, 0.45, cutoff),  # exactly at the cutoff counts
    ])  # fmt: skip
    rows = {r.client_id: r for r in _all_pages(store)}
    assert rows["cl-0001"].change_since_last_week == pytest.approx(0.4)
    assert rows["cl-0002"].change_since_last_week is None
    assert rows["cl-0003"].change_since_last_week == pytest.approx(-0.05)


def test_week_cutoff_is_the_start_of_the_day_seven_days_ago() -> None:
    now = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)
    assert week_cutoff(now) == datetime(2026, 11, 30, tzinfo=UTC)


def test_etag_moves_with_writes_filters_cursor_and_limit_only(store: Store) -> None:
    seed_episodes(store, [_episode(i, 0.1 * i) for i in range(1, 6)])
    f = CaseloadFilters()
    with store.read() as conn:
        tag = caseload_etag(conn, CLINIC, f, None, 10, seal=SEAL)
        assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
        assert caseload_etag(conn, CLINIC, f, None, 10, seal=SEAL) == tag
        others = {
            caseload_etag(conn, CLINIC, CaseloadFilters(band="low"), None, 10, seal=SEAL),
            caseload_etag(conn, CLINIC, CaseloadFilters(therapist_id="t-1"), None, 10, seal=SEAL),
            caseload_etag(
                conn, CLINIC, CaseloadFilters(changed_since=days_ago(3)), None, 10, seal=SEAL
            ),
            caseload_etag(
                conn, CLINIC, f, encode_cursor(SEAL, CLINIC, BY_RISK, 0.3, 3), 10, seal=SEAL
            ),
            caseload_etag(conn, CLINIC, f, None, 11, seal=SEAL),
            caseload_etag(conn, "other", f, None, 10, seal=SEAL),
            # Another cursor key (a rotated audit key): the body's next_cursor differs.
            caseload_etag(conn, CLINIC, f, None, 10, seal=CursorSeal(bytes(32))),
            caseload_etag(
                conn, CLINIC, f, None, 10, now=datetime.now(UTC) + timedelta(days=1), seal=SEAL
            ),
        }
        assert tag not in others and len(others) == 8
    with store.write() as conn:
        conn.execute(update(episodes).where(episodes.c.id == 2).values(latest_probability=0.9))
        c = clinic_state.c
        conn.execute(
            update(clinic_state).where(c.clinic_id == CLINIC).values(version=c.version + 1)
        )
    with store.read() as conn:
        assert caseload_etag(conn, CLINIC, f, None, 10, seal=SEAL) != tag


def test_the_etag_opens_its_cursor_first(store: Store) -> None:
    # A forged, foreign or over-long cursor has no tag: the caller's 400, whatever it matches.
    seed_episodes(store, [_episode(i, 0.1 * i) for i in range(1, 6)])
    good = encode_cursor(SEAL, CLINIC, BY_RISK, 0.3, 3)
    forged = good[:5] + ("A" if good[5] != "A" else "B") + good[6:]
    foreign = encode_cursor(CursorSeal(bytes(32)), CLINIC, BY_RISK, 0.3, 3)
    with store.read() as conn:
        caseload_etag(conn, CLINIC, CaseloadFilters(), good, 10, seal=SEAL)
        for bad in (forged, foreign, "A" * (CURSOR_MAX_LENGTH + 1)):
            with pytest.raises(CursorError):
                caseload_etag(conn, CLINIC, CaseloadFilters(), bad, 10, seal=SEAL)


def test_risk_cursors_are_sealed_and_checked() -> None:
    cursor = encode_cursor(SEAL, CLINIC, BY_RISK, 0.375, 42)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"42" not in raw and b"0.375" not in raw
    anchor = decode_cursor(cursor, BY_RISK, SEAL, CLINIC)
    assert (anchor.value, anchor.episode_id) == (0.375, 42)
    unscored = decode_cursor(encode_cursor(SEAL, CLINIC, BY_RISK, None, 7), BY_RISK, SEAL, CLINIC)
    assert (unscored.value, unscored.episode_id) == (None, 7)
    clear = "WyJzIiwwLjM3NSw0Ml0"  # the clear cursor of earlier versions: ["s",0.375,42]
    for bad in ("", "xyz", "eyJhIjoxfQ", encode_cursor(SEAL, CLINIC, BY_RISK, 0.5, 0), clear):
        with pytest.raises(CursorError, match="not a cursor"):
            decode_cursor(bad, BY_RISK, SEAL, CLINIC)
    with pytest.raises(CursorError, match="not a cursor"):
        decode_cursor(cursor, BY_RISK, SEAL, "other")


def test_limit_is_bounded(store: Store) -> None:
    with store.read() as conn, pytest.raises(ValueError, match="limit must be 1 to 1000"):
        caseload_page(conn, CLINIC, CaseloadFilters(), None, 1001, seal=SEAL)
