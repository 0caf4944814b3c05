"""The dashboard's reads of the client store, into the records of :mod:`service.dashboard.views`.

The caseload comes from the one caseload query (:func:`service.store.caseload.caseload_page`),
which the JSON endpoint serves too; this module adds what a page shows beside it, for the page's
rows only: each client's stored risk history (the sparkline) and last appointment date. A
sparkline draws the scores of the latest score's model version only, from where that version
took over: scores of two models are not one trend (after a promotion the step between them is
the new model's calibration, not a change in the client). A client
comes from the repository's reads (:mod:`service.store.repository`). Blocking: call from a
worker thread.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from service.dashboard.views import (
    Appointment,
    CaseloadPage,
    CaseloadRow,
    ClientRecord,
    DriverRecord,
)
from service.store import caseload, repository
from service.store.cursors import CursorSeal
from service.store.db import Store
from service.store.tables import episodes, risk_scores, sessions

#: Scores drawn in a sparkline (the most recent ones).
SPARK_POINTS = 12
#: Rows per caseload page.
PAGE_ROWS = 50


def read_caseload(
    store: Store,
    clinic_id: str,
    filters: caseload.CaseloadFilters,
    cursor: str | None,
    limit: int = PAGE_ROWS,
    *,
    order: caseload.CaseloadOrder = caseload.BY_RISK,
    seal: CursorSeal,
) -> CaseloadPage:
    """One caseload page in ``order`` (sorted over the whole caseload by the query; ``seal``
    seals and opens its cursors) with its sparklines, last sessions and the
    clinic's therapists.

    Raises :class:`~service.store.caseload.CursorError` for a cursor the service did not issue
    and :class:`~service.store.db.StoreUnavailable` on an outage.
    """
    with store.read() as conn:
        page = caseload.caseload_page(
            conn, clinic_id, filters, cursor, limit, order=order, seal=seal
        )
        versions = {r.client_id: r.model_version for r in page.rows}
        history, last = _details(conn, clinic_id, versions)
        therapists = _therapists(conn, clinic_id)
    rows = tuple(
        CaseloadRow(
            client_id=r.client_id,
            therapist_id=r.therapist_id,
            band=r.band,
            probability=r.probability,
            change_7d=r.change_since_last_week,
            top_driver=r.top_driver,
            last_session=last.get(r.client_id),
            model_version=r.model_version,
            history=tuple(history.get(r.client_id, ())),
        )
        for r in page.rows
    )
    return CaseloadPage(rows, page.next_cursor, therapists)


def same_version_tail(scores: list[tuple[float, str | None]], version: str | None) -> list[float]:
    """The probabilities of ``scores`` (oldest first, with their model versions) since the last
    change of model version, when the last one is ``version``; none otherwise."""
    tail: list[float] = []
    for probability, v in reversed(scores):
        if v != version:
            break
        tail.append(probability)
    return tail[::-1]


def _details(
    conn: Connection, clinic_id: str, versions: dict[str, str | None]
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per client of the page: its last :data:`SPARK_POINTS` stored probabilities of the
    model version of its latest score (``versions``), since that version took over (oldest
    first), and its last appointment's date."""
    client_ids = list(versions)
    if not client_ids:
        return {}, {}
    e, r, s = episodes.c, risk_scores.c, sessions.c
    mine = (e.clinic_id == clinic_id) & e.client_id.in_(client_ids)
    ranked = (
        select(
            e.client_id,
            r.probability,
            r.model_version,
            r.scored_at,
            r.id,
            func.row_number()
            .over(partition_by=r.episode_id, order_by=(r.scored_at.desc(), r.id.desc()))
            .label("rank"),
        )  # fmt: skip
        .join(episodes, episodes.c.id == r.episode_id)
        .where(mine)
        .subquery()
    )
    query = (
        select(ranked.c.client_id, ranked.c.probability, ranked.c.model_version)
        .where(ranked.c.rank <= SPARK_POINTS)
        .order_by(ranked.c.client_id, ranked.c.scored_at, ranked.c.id)
    )
    scores: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
    for client_id, probability, version in conn.execute(query).all():
        scores[client_id].append((float(probability), version))
    history = {c: same_version_tail(s, versions.get(c)) for c, s in scores.items()}
    last_query = (
        select(e.client_id, func.max(s.session_date))
        .join(sessions, s.episode_id == e.id)
        .where(mine)
        .group_by(e.client_id)
    )
    last = {client_id: day for client_id, day in conn.execute(last_query).all()}
    return history, last


def _therapists(conn: Connection, clinic_id: str) -> tuple[str, ...]:
    e = episodes.c
    query = (
        select(e.therapist_id)
        .where(e.clinic_id == clinic_id, e.outcome.is_(None))
        .distinct()
        .order_by(e.therapist_id)
    )
    return tuple(conn.execute(query).scalars().all())


def read_client(store: Store, clinic_id: str, client_id: str) -> ClientRecord | None:
    """The client's episode, appointments, latest score with its drivers, and risk history;
    None when the clinic has no such client (another clinic's clients look missing)."""
    with store.read() as conn:
        found = repository.find_episode(conn, clinic_id, client_id)
        if found is None:
            return None
        request = repository.episode_request(conn, found)
        latest = repository.latest_score(conn, found.id)
        # Newest first: the sparkline draws the last SPARK_POINTS, oldest first.
        history = repository.score_history(conn, found.id, SPARK_POINTS)[::-1]
    appointments = tuple(
        Appointment(
            session_number=int(a["session_number"]),
            session_date=a["session_date"],
            attendance=str(a["attendance"]),
            ratings=dict(a.get("ratings") or {}),
        )
        for a in sorted(request.sessions, key=lambda a: a["session_number"])
    )
    drivers: tuple[DriverRecord, ...] = ()
    if latest is not None:
        drivers = tuple(
            DriverRecord(
                label=d["label"], text=d["text"], direction=d["direction"], focus=d.get("focus")
            )  # fmt: skip
            for d in (latest.explanation or {}).get("drivers", ())
        )
    return ClientRecord(
        client_id=client_id,
        therapist_id=str(request.therapist_id),
        intake_date=request.intake_date,
        appointments=appointments,
        probability=None if latest is None else float(latest.probability),
        band=None if latest is None else latest.band,
        model_version=None if latest is None else latest.model_version,
        scored_at=None if latest is None else _utc(latest.scored_at),
        landmark=None if latest is None else int(latest.landmark),
        drivers=drivers,
        history=tuple(
            same_version_tail(
                [(float(h.probability), h.model_version) for h in history],
                None if latest is None else latest.model_version,
            )
        ),
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
