"""A clinic's caseload: its open episodes sorted by risk, one page at a time, and the page's
strong ETag.

One query serves ``GET /v1/clinics/{clinic_id}/caseload`` and the dashboard's caseload table
(:func:`caseload_page`). The latest score of each episode is denormalised on the ``episodes``
row (:mod:`service.store.tables`), so a page is one indexed query on ``episodes`` whose rows
each find their score of a week ago by one seek of ``risk_scores``' (episode, time) index.

Order: by default probability descending, then the episode's store id descending (a stable
tie-break the clinic's ``(clinic_id, latest_probability)`` index already holds). Open episodes
not scored yet (their history breaks the data contract, or no model was loaded when it arrived)
come last, newest first, with no probability: a caseload never hides a client. The dashboard may
also sort by the change in a week, the therapist, the last appointment or the client id, either
way (:class:`CaseloadOrder`): the whole caseload is sorted by the query, never one page, and rows
without a value (no score, no score a week ago, no appointment) come last in both orders. Pages
are keyset pages on (sort key, id): the opaque cursor carries the last row's sort key and store
id as they were when the page was read, and the next page starts after that position whatever
has happened to that row since (a new appointment, another therapist, a rescore, a closed
episode), at no offset scan's cost. A row whose key stays put while a clinician pages is listed
exactly once. A row whose key changes in the meantime is listed where it is when the page
holding it is read: twice if it was listed already and moves to a page not read yet, not at all
if it moves from a page not read yet to one already read (as in any keyset paging; the first
page again shows the caseload as it is now). Every order's cursor is sealed (AES-256-SIV, the
purpose "caseload" and the clinic as associated data: :class:`~service.store.cursors.CursorSeal`,
:func:`encode_cursor`): its key (a probability, a therapist id, a client id, an appointment
date) and the row's id are never readable in a URL, and a changed cursor, one of another order
or of a risk history, or one issued to another clinic or under another key is refused
(:class:`CursorError`).

The ETag (:func:`caseload_etag`) is computed from :data:`FORMAT`, ``clinic_state.version``
(bumped with every write that changes a caseload row), the week the change is measured against,
the filters, the cursor, the limit and the fingerprint of the cursor key (the body's
``next_cursor`` is sealed under it), never by serialising the list: a poll that changed nothing
costs one primary-key read and the opening of its cursor, and a cursor that does not open is
refused before any tag is compared (never a 304).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, Row, and_, bindparam, func, or_, select

from service.schemas import ID_MAX_LENGTH
from service.store.cursors import BadCursor, CursorSeal, sealed_length
from service.store.tables import clinic_state, episodes, risk_scores, sessions

#: Rows per page unless the caller asks for fewer or more.
DEFAULT_LIMIT = 100
#: The most rows one page may hold (a 5,000-client clinic is five pages).
MAX_LIMIT = 1000
#: Bumped when the body's format changes, so an old ETag never matches a new body (2: the
#: cursors are sealed; a tag of clear cursors must not keep a poller on one).
FORMAT = "caseload/2"
#: How far back "the change since last week" looks.
WEEK = timedelta(days=7)

Band = Literal["low", "moderate", "high"]
SortKey = Literal["probability", "change", "therapist", "last_session", "client"]
#: The sort keys, in the order their index is written into a cursor.
SORT_KEYS: tuple[SortKey, ...] = ("probability", "change", "therapist", "last_session", "client")


class CursorError(BadCursor):
    """The cursor is not one this service issued (for this order and clinic)."""


@dataclass(frozen=True)
class CaseloadFilters:
    """Which open episodes to list: one therapist's, one band's, those changed since a time."""

    therapist_id: str | None = None
    band: Band | None = None
    changed_since: datetime | None = None

    def key(self) -> str:
        since = "" if self.changed_since is None else _utc(self.changed_since).isoformat()
        return f"{self.therapist_id or ''}\x1f{self.band or ''}\x1f{since}"


@dataclass(frozen=True)
class CaseloadOrder:
    """How a caseload is sorted: a key of :data:`SORT_KEYS`, descending or ascending (rows
    without a value last either way; ties by the store id, the same way round)."""

    sort: SortKey = "probability"
    descending: bool = True

    def key(self) -> str:
        return f"{self.sort}\x1f{'desc' if self.descending else 'asc'}"


#: The caseload's order unless asked otherwise (the JSON endpoint's only order).
BY_RISK = CaseloadOrder()


@dataclass(frozen=True)
class CaseloadRow:
    """One open episode of the caseload.

    ``probability``, ``band``, ``model_version`` and ``scored_at`` are those of its latest
    score (None when it has none yet); ``change_since_last_week`` is ``probability`` minus the
    latest score of the same model version at or before :func:`week_cutoff` (None when there
    is none: scores of two model versions are never compared); ``top_driver`` is
    the score's strongest driver that raises the risk, in clinician language
    (:func:`service.store.repository.top_driver`).
    """

    client_id: str
    therapist_id: str
    band: str | None
    probability: float | None
    change_since_last_week: float | None
    top_driver: str | None
    model_version: str | None
    scored_at: datetime | None


@dataclass(frozen=True)
class CaseloadPage:
    """One page of a caseload: rows in order, and the cursor of the next page (None at the
    end)."""

    clinic_id: str
    rows: tuple[CaseloadRow, ...]
    next_cursor: str | None
    limit: int
    week_cutoff: datetime


def week_cutoff(now: datetime | None = None) -> datetime:
    """The time "last week" is read at: the start (UTC) of the day seven days before ``now``.

    A whole day rather than exactly 168 hours ago, so a caseload's body, and its ETag, change
    at most once a day with the passing of time instead of on every poll.
    """
    today = _utc(now or datetime.now(UTC)).date()
    return datetime.combine(today - WEEK, time(0), tzinfo=UTC)


#: Built once: every 304 runs it, and building the statement cost about three times its
#: execution on SQLite (SQLAlchemy caches the compiled form either way).
_CLINIC_VERSION = select(clinic_state.c.version).where(
    clinic_state.c.clinic_id == bindparam("clinic_id")
)


def clinic_version(conn: Connection, clinic_id: str) -> int:
    """The clinic's change counter (0 for a clinic with nothing stored)."""
    version = conn.execute(_CLINIC_VERSION, {"clinic_id": clinic_id}).scalar_one_or_none()
    return int(version or 0)


def caseload_etag(
    conn: Connection,
    clinic_id: str,
    filters: CaseloadFilters,
    cursor: str | None,
    limit: int,
    *,
    now: datetime | None = None,
    seal: CursorSeal,
) -> str:
    """The strong ETag (quoted) of the risk-ordered page :func:`caseload_page` returns for the
    same arguments: the cursor opened first (:class:`CursorError` for one this service did not
    issue, so a forged cursor is never answered by a tag), then one primary-key read, no rows."""
    if cursor is not None:
        decode_cursor(cursor, BY_RISK, seal, clinic_id)
    version = clinic_version(conn, clinic_id)
    cutoff = week_cutoff(now).date()
    return etag_of(clinic_id, version, cutoff, filters, cursor, limit, seal.fingerprint)


def etag_of(
    clinic_id: str,
    version: int,
    cutoff: date,
    filters: CaseloadFilters,
    cursor: str | None,
    limit: int,
    key_fingerprint: str,
) -> str:
    """Everything a page's body depends on, hashed (SHA-256, 128 bits kept), quoted:
    ``key_fingerprint`` is :attr:`CursorSeal.fingerprint` of the key its ``next_cursor`` is
    sealed under."""
    raw = "\x1e".join(
        (FORMAT, clinic_id, str(version), cutoff.isoformat(), filters.key(), cursor or "",
         str(limit), key_fingerprint)
    )  # fmt: skip
    return '"' + hashlib.sha256(raw.encode()).hexdigest()[:32] + '"'


def caseload_page(
    conn: Connection,
    clinic_id: str,
    filters: CaseloadFilters,
    cursor: str | None,
    limit: int = DEFAULT_LIMIT,
    *,
    now: datetime | None = None,
    order: CaseloadOrder = BY_RISK,
    seal: CursorSeal,
) -> CaseloadPage:
    """One page of the clinic's open episodes, highest risk first unless ``order`` says
    otherwise.

    Parameters
    ----------
    conn
        A connection to the store (read only here).
    clinic_id
        The caller's clinic (from its credential, never from the request).
    filters
        Therapist, band and changed-since; None means no filter.
    cursor
        ``next_cursor`` of the previous page, or None for the first page.
    limit
        Rows per page, 1 to :data:`MAX_LIMIT`.
    now
        The time "last week" is measured from (default: now).
    order
        The sort over the whole caseload (default: risk, highest first).
    seal
        Seals ``next_cursor`` and opens ``cursor`` (for ``clinic_id`` and ``order``).

    Raises
    ------
    CursorError
        ``cursor`` is not one :func:`caseload_page` issued for this order and clinic.
    ValueError
        ``limit`` is out of range.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1 to {MAX_LIMIT}")
    anchor = None if cursor is None else decode_cursor(cursor, order, seal, clinic_id)
    cutoff = week_cutoff(now)
    e = episodes.c
    where = [e.clinic_id == clinic_id, e.outcome.is_(None)]
    if filters.therapist_id is not None:
        where.append(e.therapist_id == filters.therapist_id)
    if filters.band is not None:
        where.append(e.latest_band == filters.band)
    if filters.changed_since is not None:
        since = _utc(filters.changed_since)
        where.append(or_(e.updated_at >= since, e.latest_scored_at >= since))
    week_ago = _score_at(cutoff)
    key = _sort_key(order.sort, week_ago)
    columns = (
        e.id, e.client_id, e.therapist_id, e.latest_band, e.latest_probability,
        e.latest_top_driver, e.latest_model_version, e.latest_scored_at, week_ago.label("week_ago"),
        key.label("sort_key"),
    )  # fmt: skip
    down = order.descending
    found: list[Any] = []
    # Rows with a value first, then those without (last in both orders). Fetch one more than
    # the page: whether a next page exists without a count.
    if anchor is None or anchor.value is not None:
        valued = [*where, key.is_not(None)]
        if anchor is not None:
            v, i = anchor.value, anchor.episode_id
            if down:
                valued.append(or_(key < v, and_(key == v, e.id < i)))
            else:
                valued.append(or_(key > v, and_(key == v, e.id > i)))
        query = (
            select(*columns)
            .where(*valued)
            .order_by(*((key.desc(), e.id.desc()) if down else (key.asc(), e.id.asc())))
            .limit(limit + 1)
        )
        found.extend(conn.execute(query).all())
    # A band filter leaves no unscored row, and a score is the risk order's key.
    if len(found) <= limit and not (filters.band is not None and order.sort == "probability"):
        valueless = [*where, key.is_(None)]
        if anchor is not None and anchor.value is None:
            valueless.append(e.id < anchor.episode_id if down else e.id > anchor.episode_id)
        query = (
            select(*columns)
            .where(*valueless)
            .order_by(e.id.desc() if down else e.id.asc())
            .limit(limit + 1 - len(found))
        )
        found.extend(conn.execute(query).all())
    more = len(found) > limit
    found = found[:limit]
    rows = tuple(map(_row, found))
    next_cursor = None
    if more:
        last = found[-1]
        next_cursor = encode_cursor(seal, clinic_id, order, last.sort_key, last.id)
    return CaseloadPage(clinic_id, rows, next_cursor, limit, cutoff)


def _sort_key(sort: SortKey, week_ago: Any) -> Any:
    """The SQL expression a caseload is sorted by (NULL: the row has no value for it)."""
    e = episodes.c
    if sort == "change":
        return e.latest_probability - week_ago
    if sort == "therapist":
        return e.therapist_id
    if sort == "client":
        return e.client_id
    if sort == "last_session":
        s = sessions.c
        return select(func.max(s.session_date)).where(s.episode_id == e.id).scalar_subquery()
    return e.latest_probability


@dataclass(frozen=True)
class _Anchor:
    """The last row of the previous page, as it was when the page was read: its sort key (None:
    a row without one) and id."""

    value: Any
    episode_id: int


def _row(r: Row[Any]) -> CaseloadRow:
    p, week_ago = r.latest_probability, r.week_ago
    return CaseloadRow(
        client_id=r.client_id,
        therapist_id=r.therapist_id,
        band=r.latest_band,
        probability=p,
        change_since_last_week=None if p is None or week_ago is None else p - week_ago,
        top_driver=r.latest_top_driver,
        model_version=r.latest_model_version,
        scored_at=r.latest_scored_at,  # aware UTC (UtcDateTime)
    )


def _score_at(cutoff: datetime) -> Any:
    """The value of the column ``week_ago``: the probability of the row's latest score at or before
    ``cutoff`` by the model version of its latest score (None when it has none). Scores of
    another version are not compared: after a promotion, the difference would be the new
    model's calibration, not a change in the client.

    Correlated to the page's ``episodes`` row: one seek of the ``risk_scores (episode_id,
    scored_at)`` index per listed row, inside the page's own query, rather than a second query
    over the page's ids (a 1,000-id IN list to compile and bind, and a window over every score
    of those episodes).
    """
    r, e = risk_scores.c, episodes.c
    return (
        select(r.probability)
        .where(
            r.episode_id == e.id,
            r.model_version == e.latest_model_version,
            r.scored_at <= cutoff,
        )
        .order_by(r.scored_at.desc(), r.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def encode_cursor(
    seal: CursorSeal, clinic_id: str, order: CaseloadOrder, value: Any, episode_id: int
) -> str:
    """The sealed cursor after a row: the order, the row's sort key ``value`` (a probability,
    a change in probability, a therapist or client id, an appointment date, or None) and its
    store id, readable by this service for ``clinic_id`` only."""
    if isinstance(value, date):
        value = value.isoformat()
    return seal.seal(
        ["o", SORT_KEYS.index(order.sort), int(order.descending), value, episode_id],
        clinic_id,
        "caseload",
    )


def decode_cursor(cursor: str, order: CaseloadOrder, seal: CursorSeal, clinic_id: str) -> _Anchor:
    """Where the page after :func:`encode_cursor`'s row starts; CursorError for a cursor of
    another order or clinic, a changed one, one longer than any issued (:data:`CURSOR_MAX_LENGTH`,
    so every bad cursor is the same answer), or anything else."""
    if len(cursor) > CURSOR_MAX_LENGTH:
        raise CursorError("not a cursor this service issued")
    try:
        key = seal.open(cursor, clinic_id, "caseload")
    except BadCursor:
        raise CursorError("not a cursor this service issued") from None
    match key:
        case ["o", int() as k, int() as d, v, int() as i] if (
            k == SORT_KEYS.index(order.sort) and d == int(order.descending) and _is_id(i)
            and not isinstance(k, bool) and not isinstance(d, bool)
        ):  # fmt: skip
            value = _key_value(order.sort, v)
            if value is not _NOT_A_KEY:
                return _Anchor(value, i)
    raise CursorError("not a cursor of this order")


_NOT_A_KEY = object()


def _key_value(sort: SortKey, value: Any) -> Any:
    """The sort key of a sealed cursor as the query compares it (``_NOT_A_KEY``: not one)."""
    if value is None:
        return None
    if sort in ("therapist", "client"):
        return value if isinstance(value, str) and len(value) <= ID_MAX_LENGTH else _NOT_A_KEY
    if sort == "last_session" and isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return _NOT_A_KEY
    if (
        sort in ("change", "probability")
        and isinstance(value, float | int)
        and (not isinstance(value, bool))
    ):
        return float(value)
    return _NOT_A_KEY


#: The largest id a cursor may name (the store's ids are 64-bit signed at most).
ID_MAX = 2**63 - 1
#: The longest cursor :func:`caseload_page` issues: a sealed cursor holding the longest id
#: (128 characters of four UTF-8 bytes each) and the largest store id.
CURSOR_MAX_LENGTH = sealed_length(
    len(orjson.dumps(["o", len(SORT_KEYS) - 1, 1, "\U0010ffff" * ID_MAX_LENGTH, ID_MAX]))
)


def _is_id(value: int) -> bool:
    return not isinstance(value, bool) and 1 <= value <= ID_MAX


def utc_instant(value: datetime) -> datetime:
    """``value`` in UTC; ValueError (no value in the message) when it is naive or its UTC
    equivalent falls outside the years 1 to 9999 (``0001-01-01T00:00:00+14:00``), which
    ``astimezone`` would raise as OverflowError deep inside a query."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a time with its UTC offset is required")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time in UTC falls outside the years 1 to 9999") from None


def _utc(value: datetime) -> datetime:
    """Aware UTC (SQLite hands stored times back naive; they were stored as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
