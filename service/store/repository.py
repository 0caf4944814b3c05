"""Reads and writes of the client store, on a connection inside a transaction
(:meth:`service.store.db.Store.read` / ``write``). No scoring here: the routes rebuild a
:class:`~service.schemas.RiskRequest` with :func:`episode_request`, score it with the one scorer
path, and store the result with :func:`add_score`.

Every write that changes a caseload row bumps ``clinic_state.version`` in the same transaction
(:func:`bump_clinic`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import groupby
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from models.results import RAISES, Driver, RiskScore
from service.schemas import RiskRequest, SessionIn
from service.store.caseload import ID_MAX
from service.store.cursors import BadCursor, CursorSeal
from service.store.tables import (
    clinic_state,
    dashboard_signed_out,
    episodes,
    idempotency_keys,
    outcomes,
    risk_scores,
    sessions,
)
from service.store_schemas import ClientFields

#: Longest top-driver text kept on a score (the column's width).
TOP_DRIVER_MAX = 512
#: The main reason of a score none of whose drivers raises the risk (all lower it).
NO_RAISING_DRIVER = "No factor raises the risk"


def top_driver(drivers: Sequence[Driver]) -> str | None:
    """The caseload's "main reason" of a score: its strongest driver that raises the risk, as
    the driver's own clinician sentence, or :data:`NO_RAISING_DRIVER` when every driver lowers
    it (a low-risk client's protective factors are no reason for concern); None without
    drivers. The one rule for new scores (:func:`add_score`) and rescores
    (:mod:`service.store.rescore`).

    No direction is appended: the column only ever holds a driver that raises the risk, and its
    heading and field description say so (revision 0004 took the old suffix off stored rows).
    """
    if not drivers:
        return None
    raising = [d for d in drivers if d.direction == RAISES]
    if not raising:
        return NO_RAISING_DRIVER
    return max(raising, key=lambda d: d.contribution).text[:TOP_DRIVER_MAX]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredEpisode:
    id: int
    clinic_id: str
    client_id: str
    outcome: str | None


def find_episode(
    conn: Connection, clinic_id: str, client_id: str, *, for_update: bool = False
) -> StoredEpisode | None:
    """The episode of ``client_id`` in ``clinic_id``; ``for_update`` locks its row until the
    transaction ends (PostgreSQL; SQLite's writer already holds the database lock)."""
    query = select(episodes.c.id, episodes.c.outcome).where(
        episodes.c.clinic_id == clinic_id, episodes.c.client_id == client_id
    )
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else StoredEpisode(row.id, clinic_id, client_id, row.outcome)


def upsert_episode(
    conn: Connection,
    clinic_id: str,
    client_id: str,
    client: ClientFields | None,
    at: datetime,
) -> StoredEpisode | None:
    """The locked episode, created from ``client`` when missing (None when missing and no
    client fields were sent), its client fields replaced when ``client`` is given."""
    found = find_episode(conn, clinic_id, client_id, for_update=True)
    if found is None and client is None:
        return None
    fields = {} if client is None else client.model_dump()
    if found is None:
        values = {"clinic_id": clinic_id, "client_id": client_id, "created_at": at}
        stmt = _insert(conn, episodes).values(**values, **fields, updated_at=at)
        # Two first posts of one new client at once (PostgreSQL): the second waits on the
        # unique key, then finds the row and locks it.
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["clinic_id", "client_id"]))
        found = find_episode(conn, clinic_id, client_id, for_update=True)
        assert found is not None
        return found
    if fields:
        conn.execute(update(episodes).where(episodes.c.id == found.id).values(**fields))
    return found


def put_sessions(
    conn: Connection, episode_id: int, posted: Sequence[SessionIn], at: datetime
) -> None:
    """Add the appointments, replacing those with a stored ``session_number`` (the last of a
    number posted twice in one body wins)."""
    by_number = {s["session_number"]: s for s in posted}
    stored = set(
        conn.execute(
            select(sessions.c.session_number).where(
                sessions.c.episode_id == episode_id,
                sessions.c.session_number.in_(list(by_number)),
            )
        ).scalars()
    )
    for number, s in by_number.items():
        values = {
            "session_date": s["session_date"],
            "attendance": s["attendance"],
            "ratings": s.get("ratings"),
            "updated_at": at,
        }
        if number in stored:
            conn.execute(
                update(sessions)
                .where(sessions.c.episode_id == episode_id, sessions.c.session_number == number)
                .values(**values)
            )
        else:
            conn.execute(
                insert(sessions).values(episode_id=episode_id, session_number=number, **values)
            )


def episode_requests(
    conn: Connection, where: ColumnElement[bool], *, limit: int | None = None
) -> list[tuple[Any, RiskRequest]]:
    """The stored episodes matching ``where`` (by id; at most ``limit``) as the requests
    ``POST /v1/risk`` would be sent: each episode row (its id, client fields, latest score id
    and update time) with its client fields and every stored appointment by session number
    (an episode without one gets no sessions). The one rebuild of stored episodes: a client's
    route reads one (:func:`episode_request`), rescoring a batch. Built from stored,
    once-validated values without validating them again."""
    e, s = episodes.c, sessions.c
    query = select(
        e.id, e.client_id, e.clinic_id, e.therapist_id, e.intake_date, e.age, e.gender,
        e.referral_source, e.latest_score_id, e.updated_at,
    ).where(where).order_by(e.id)  # fmt: skip
    rows = conn.execute(query if limit is None else query.limit(limit)).all()
    if not rows:
        return []
    # Every appointment of the episodes' id range in one range scan of (episode_id,
    # session_number). Ratings as the stored JSON text, parsed once here by orjson (the JSON
    # type's per-row json.loads was a tenth of a rescoring run).
    appointments = conn.execute(
        select(s.episode_id, s.session_number, s.session_date, s.attendance,
               cast(s.ratings, Text))
        .where(s.episode_id >= rows[0].id, s.episode_id <= rows[-1].id)
        .order_by(s.episode_id, s.session_number)
    ).all()  # fmt: skip
    by_episode: dict[int, list[Any]] = {
        episode_id: [
            {"session_number": n, "session_date": d, "attendance": a}
            | ({} if raw is None or (rated := orjson.loads(raw)) is None else {"ratings": rated})
            for _, n, d, a, raw in group
        ]
        for episode_id, group in groupby(appointments, key=lambda r: r[0])
    }
    return [
        (r, RiskRequest.model_construct(
            client_id=r.client_id, clinic_id=r.clinic_id, therapist_id=r.therapist_id,
            intake_date=r.intake_date, age=r.age, gender=r.gender,
            referral_source=r.referral_source, sessions=by_episode.get(r.id, []),
        ))
        for r in rows
    ]  # fmt: skip


def episode_request(
    conn: Connection, episode: StoredEpisode, first: Sequence[int] = ()
) -> RiskRequest:
    """The stored episode as the request ``POST /v1/risk`` would be sent
    (:func:`episode_requests` of its one id), the appointments numbered in ``first`` first (in
    that order), the others by session number."""
    [(_, request)] = episode_requests(conn, episodes.c.id == episode.id)
    if not first:
        return request
    by_number = {s["session_number"]: s for s in request.sessions}
    order = [n for n in first if n in by_number]
    order += [n for n in by_number if n not in set(first)]
    return request.model_copy(update={"sessions": [by_number[n] for n in order]})


def session_count(conn: Connection, episode_id: int) -> int:
    query = select(func.count()).where(sessions.c.episode_id == episode_id)
    return int(conn.execute(query).scalar_one())


def add_score(
    conn: Connection,
    episode: StoredEpisode,
    score: RiskScore,
    *,
    model_name: str,
    model_version: str,
    reason: str,
    at: datetime,
) -> int:
    """Store ``score`` in the history, make it the episode's latest and bump the clinic."""
    explanation = score.to_dict()["explanation"]
    top = top_driver(score.explanation.drivers)
    score_id = conn.execute(
        insert(risk_scores)
        .values(
            episode_id=episode.id,
            model_name=model_name,
            model_version=model_version,
            scored_at=score.scored_at,
            landmark=score.landmark,
            probability=score.probability,
            band=score.risk_band,
            top_driver=top,
            explanation=explanation,
            reason=reason,
        )
        .returning(risk_scores.c.id)
    ).scalar_one()
    conn.execute(
        update(episodes)
        .where(episodes.c.id == episode.id)
        .values(
            latest_score_id=score_id,
            latest_probability=score.probability,
            latest_band=score.risk_band,
            latest_model_version=model_version,
            latest_scored_at=score.scored_at,
            latest_top_driver=top,
            updated_at=at,
        )
    )
    bump_clinic(conn, episode.clinic_id)
    return int(score_id)


def record_outcome(
    conn: Connection, episode: StoredEpisode, outcome: str, day: date, at: datetime
) -> None:
    """Close the episode (a second call corrects the first) and bump the clinic."""
    values = {"outcome": outcome, "outcome_date": day, "recorded_at": at}
    stmt = _insert(conn, outcomes).values(episode_id=episode.id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["episode_id"], set_=values))
    conn.execute(
        update(episodes).where(episodes.c.id == episode.id).values(outcome=outcome, updated_at=at)
    )
    bump_clinic(conn, episode.clinic_id)


def outcome_date(conn: Connection, episode_id: int) -> date | None:
    """The recorded outcome's date (None while the episode is open)."""
    query = select(outcomes.c.outcome_date).where(outcomes.c.episode_id == episode_id)
    return conn.execute(query).scalar_one_or_none()


def episode_dates(conn: Connection, episode_id: int) -> tuple[date, date | None]:
    """The episode's intake date and its latest appointment's date (None without one)."""
    intake = conn.execute(
        select(episodes.c.intake_date).where(episodes.c.id == episode_id)
    ).scalar_one()
    last = conn.execute(
        select(func.max(sessions.c.session_date)).where(sessions.c.episode_id == episode_id)
    ).scalar_one_or_none()
    return intake, last


def withdraw_outcome(conn: Connection, episode: StoredEpisode, at: datetime) -> bool:
    """Reopen the episode: its outcome row is deleted (the audit trail keeps that it was
    withdrawn), the episode is open again and the clinic bumped. False when none was recorded."""
    deleted = conn.execute(delete(outcomes).where(outcomes.c.episode_id == episode.id)).rowcount
    if not deleted and episode.outcome is None:
        return False
    conn.execute(
        update(episodes).where(episodes.c.id == episode.id).values(outcome=None, updated_at=at)
    )
    bump_clinic(conn, episode.clinic_id)
    return True


def delete_session(conn: Connection, episode: StoredEpisode, number: int, at: datetime) -> bool:
    """Delete appointment ``number`` of the episode (False when it is not stored); the caller
    rescores, which bumps the clinic."""
    deleted = conn.execute(
        delete(sessions).where(
            sessions.c.episode_id == episode.id, sessions.c.session_number == number
        )
    ).rowcount
    if deleted:
        conn.execute(update(episodes).where(episodes.c.id == episode.id).values(updated_at=at))
    return bool(deleted)


def clear_score(conn: Connection, episode: StoredEpisode, at: datetime) -> None:
    """The episode has no score any more (its appointments were all deleted): its latest
    score is cleared, so the caseload lists it as not scored yet; the history keeps the
    earlier scores. Bumps the clinic."""
    conn.execute(
        update(episodes)
        .where(episodes.c.id == episode.id)
        .values(
            latest_score_id=None,
            latest_probability=None,
            latest_band=None,
            latest_model_version=None,
            latest_scored_at=None,
            latest_top_driver=None,
            updated_at=at,
        )
    )
    bump_clinic(conn, episode.clinic_id)


def bump_clinic(conn: Connection, clinic_id: str) -> None:
    """``clinic_state.version += 1`` (created at 1), in the caller's transaction."""
    stmt = _insert(conn, clinic_state).values(clinic_id=clinic_id, version=1)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["clinic_id"], set_={"version": clinic_state.c.version + 1}
        )
    )


def clinic_version(conn: Connection, clinic_id: str) -> int:
    query = select(clinic_state.c.version).where(clinic_state.c.clinic_id == clinic_id)
    return int(conn.execute(query).scalar() or 0)


def latest_score(conn: Connection, episode_id: int) -> Any:
    """The episode's latest stored score row (None before the first)."""
    query = (
        select(risk_scores)
        .join(episodes, episodes.c.latest_score_id == risk_scores.c.id)
        .where(episodes.c.id == episode_id)
    )
    return conn.execute(query).first()


class HistoryCursorError(ValueError):
    """The history cursor is not one this service issued for this client."""


def score_history(
    conn: Connection, episode_id: int, limit: int, *, after_score_id: int | None = None
) -> list[Any]:
    """Up to ``limit`` stored scores of the episode, newest first (without explanations), each
    with its ``id``; with ``after_score_id``, those after that score of this episode (a keyset
    on ``(scored_at, id)``: scores stored while a caller pages only shift no row twice).

    Raises :class:`HistoryCursorError` when ``after_score_id`` is not a score of this episode
    (another client's, or another clinic's)."""
    r = risk_scores.c
    query = (
        select(r.id, r.model_name, r.model_version, r.scored_at, r.landmark, r.probability,
               r.band, r.top_driver, r.reason)
        .where(r.episode_id == episode_id)
        .order_by(r.scored_at.desc(), r.id.desc())
        .limit(limit)
    )  # fmt: skip
    if after_score_id is not None:
        anchor = conn.execute(
            select(r.scored_at).where(r.id == after_score_id, r.episode_id == episode_id)
        ).scalar_one_or_none()
        if anchor is None:
            raise HistoryCursorError("not a cursor this service issued for this client")
        query = query.where(
            (r.scored_at < anchor) | ((r.scored_at == anchor) & (r.id < after_score_id))
        )
    return list(conn.execute(query).all())


def encode_history_cursor(seal: CursorSeal, clinic_id: str, score_id: int) -> str:
    """The opaque cursor after a history entry: the store's score id only (no time, no client
    id), sealed for ``clinic_id`` (:class:`~service.store.cursors.CursorSeal`); the read also
    checks the score is the client's own."""
    return seal.seal(["h", score_id], clinic_id, "history")


def decode_history_cursor(seal: CursorSeal, clinic_id: str, cursor: str) -> int:
    """The score id of :func:`encode_history_cursor` for ``clinic_id``; HistoryCursorError for
    anything else (changed, another clinic's, sealed under another key)."""
    try:
        key = seal.open(cursor, clinic_id, "history")
    except BadCursor:
        raise HistoryCursorError("not a cursor this service issued") from None
    match key:
        case ["h", int() as i] if not isinstance(i, bool) and 1 <= i <= ID_MAX:
            return i
    raise HistoryCursorError("not a cursor this service issued")


# -- dashboard sign-outs ----------------------------------------------------------------------


def sign_out(conn: Connection, digest: str, expires_at: datetime, max_entries: int) -> bool:
    """Keep the signed-out session ``digest`` until ``expires_at`` (its cookie's expiry), after
    purging the rows already expired. False when ``max_entries`` live rows are kept already:
    nothing is kept, and the caller refuses the sign-out (evicting a live row would let its
    signed-out cookie pass again)."""
    t = dashboard_signed_out.c
    conn.execute(delete(dashboard_signed_out).where(t.expires_at <= now()))
    kept = conn.execute(select(func.count()).select_from(dashboard_signed_out)).scalar_one()
    if kept >= max_entries:
        return False
    stmt = _insert(conn, dashboard_signed_out).values(digest=digest, expires_at=expires_at)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["digest"]))
    return True


def is_signed_out(conn: Connection, digest: str) -> bool:
    """Whether session ``digest`` was signed out and its cookie has not expired yet."""
    t = dashboard_signed_out.c
    query = select(t.digest).where(t.digest == digest, t.expires_at > now())
    return conn.execute(query).first() is not None


# -- idempotency ----------------------------------------------------------------------------


def key_hash(clinic_id: str, key: str) -> str:
    return hashlib.sha256(f"{clinic_id}\x00{key}".encode()).hexdigest()


def request_hash(route: str, client_id: str, body: dict[str, Any]) -> str:
    """The request's fingerprint: route, client and the body as validated (key order and
    whitespace do not matter)."""
    payload = orjson.dumps([route, client_id, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


#: Expired idempotency keys deleted by one keyed write, at most (a bounded cost per request).
PURGE_BATCH = 100


def lock_key(conn: Connection, hashed_key: str) -> None:
    """Serialise the requests of one key until the transaction ends, so a second request waits
    for the first and replays its answer. PostgreSQL: a transaction-level advisory lock on 60
    bits of the key's hash (a collision only makes two keys wait for each other); SQLite: the
    writer's lock (``BEGIN IMMEDIATE``) already does."""
    if conn.dialect.name != "postgresql":
        return
    # key_hash already covers the clinic; 60 of its bits fit PostgreSQL's bigint key.
    conn.execute(select(func.pg_advisory_xact_lock(int(hashed_key[:15], 16))))


def find_idempotent(conn: Connection, clinic_id: str, hashed_key: str, since: datetime) -> Any:
    """The stored answer of the key, if it was stored at or after ``since``; an older one is
    deleted (an expired key is a new request)."""
    k = idempotency_keys.c
    mine = (k.clinic_id == clinic_id, k.key_hash == hashed_key)
    query = select(k.request_hash, k.status_code, k.response, k.created_at).where(*mine)
    row = conn.execute(query).first()
    if row is not None and row.created_at < since:
        conn.execute(delete(idempotency_keys).where(*mine))
        return None
    return row


def purge_idempotent(conn: Connection, before: datetime, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` keys stored before ``before`` (any clinic), oldest first."""
    k = idempotency_keys.c
    oldest = select(k.id).where(k.created_at < before).order_by(k.created_at).limit(limit)
    return int(conn.execute(delete(idempotency_keys).where(k.id.in_(oldest))).rowcount)


def save_idempotent(
    conn: Connection,
    clinic_id: str,
    hashed_key: str,
    hashed_request: str,
    status: int,
    response: dict[str, Any],
    at: datetime,
) -> None:
    conn.execute(
        insert(idempotency_keys).values(
            clinic_id=clinic_id,
            key_hash=hashed_key,
            request_hash=hashed_request,
            status_code=status,
            response=response,
            created_at=at,
        )
    )


def _insert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_*`` on SQLite and PostgreSQL."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
