"""The client store's routes: ``POST /v1/clients/{client_id}/sessions`` (store appointments and
rescore), ``POST .../outcome`` (close the episode), ``DELETE .../outcome`` (reopen and rescore),
``DELETE .../sessions/{n}`` (rescore, or leave the episode unscored when it was the last one)
and ``GET .../risk`` (latest stored score, ``?history=true`` for the history, newest first, a
page at a time).

Tenancy: the clinic is the credential's; a client of another clinic is the same 404 as a missing
one. Scoring takes the one path (:func:`service.routers.risk.score_one`) on the stored episode
rebuilt as the ``POST /v1/risk`` request, inside the write transaction: the score always matches
the history it is stored with, and a 2xx is answered only after the commit. Plain ``def`` routes:
database and scoring work run in the thread pool.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from features.contract import SESSION_NUMBER_MAX
from features.validation import DUPLICATE_SESSION_NUMBER
from service.auth import Principal
from service.auth.principal import CLIENTS_READ, CLIENTS_WRITE
from service.deps import ModelDep, SettingsDep
from service.errors import (
    InvalidRequest,
    bad_cursor,
    cursor_error_responses,
    error_responses,
    request_id_of,
)
from service.model_store import LoadedModel
from service.routers.jsonbody import OrjsonRoute
from service.routers.risk import BODY_ERRORS, ERRORS, score_one
from service.schemas import _ID_CHARS, ID_MAX_LENGTH, ModelRef
from service.security import NOT_FOUND, forget_clients, note_client, scoped
from service.settings import ServiceSettings
from service.store import repository as repo
from service.store.caseload import ID_MAX
from service.store.cursors import CursorSeal, sealed_length
from service.store.deps import ClientStoreDep, request_cursor_seal
from service.store.repository import StoredEpisode
from service.store_schemas import (
    ClientRisk,
    OutcomeRequest,
    OutcomeResponse,
    ScoreEntry,
    SessionsRequest,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/clients", tags=["clients"], route_class=OrjsonRoute)

ClientsReader = Annotated[Principal, Depends(scoped(CLIENTS_READ))]
ClientsWriter = Annotated[Principal, Depends(scoped(CLIENTS_WRITE))]
ClientId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=ID_MAX_LENGTH,
        pattern=f"^{_ID_CHARS}$",
        description="The client's id in the clinic's records (the client_id of POST /v1/risk).",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Any unique string per logical request: a retry with the same key and body "
        "gets the stored response (Idempotent-Replayed: true); the same key with another body "
        "is a 422. A second request with a key waits for the first, then replays it. Keys are "
        "kept 24 h (ALLIANCE_RISK_IDEMPOTENCY_KEY_TTL_S); then the same key is a new request.",
    ),
]

CLIENT_FIELDS_NEEDED = "required on the first post of a client that is not stored yet"
KEY_REUSED = "this Idempotency-Key was used with a different request"
KEY_IN_FLIGHT = "a request with this Idempotency-Key is being processed; retry later"
STORE_ERRORS = error_responses(404, 409)
#: How far ahead of the service's clock (UTC) a date may be: a day of clock skew and time zones.
CLOCK_SKEW = timedelta(days=1)
IN_THE_FUTURE = "more than a day in the future"
AFTER_OUTCOME = (
    "the episode is closed: an appointment dated after its outcome date cannot be added; "
    "reopen it first (DELETE /v1/clients/{client_id}/outcome) if the outcome was recorded "
    "by mistake"
)
OUTCOME_BEFORE_INTAKE = "before the client's intake date"
OUTCOME_BEFORE_SESSION = "before the client's last stored appointment"
NO_OUTCOME = "no outcome is recorded for this client"
SESSION_NOT_FOUND = "session not found"
#: Stored scores per history page unless the caller asks for fewer or more, and at most.
HISTORY_LIMIT = 100
HISTORY_LIMIT_MAX = 1000
#: Longest history cursor this service issues: the largest score id, sealed. Checked in the
#: route (not a Query max_length, whose 422 would be a second answer to a bad cursor).
HISTORY_CURSOR_MAX_LENGTH = sealed_length(len(orjson.dumps(["h", ID_MAX])))


def episode_full(max_sessions: int) -> str:
    return (
        f"the stored episode is full: at most {max_sessions} appointments are kept per client, "
        "and this post would store more"
    )


def _latest_allowed() -> date:
    return (repo.now() + CLOCK_SKEW).date()


@router.post(
    "/{client_id}/sessions",
    operation_id="storeClientSessions",
    response_model=ClientRisk,
    responses={**ERRORS, **BODY_ERRORS, **STORE_ERRORS},
    summary="Store (append or correct) a client's appointments and ratings, and rescore",
)
def post_sessions(
    client_id: ClientId,
    body: SessionsRequest,
    request: Request,
    principal: ClientsWriter,
    model: ModelDep,
    settings: SettingsDep,
    store: ClientStoreDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Appointments with a stored ``session_number`` replace it; new ones are added. The whole
    stored episode is then scored by the served model and the score stored with it, in one
    transaction committed before the answer. The first post of a client must carry
    ``client`` (therapist, intake date, ...)."""
    note_client(request, principal.clinic, client_id)
    request.state.model_version = model.version
    _refuse_repeated_numbers(body)
    _refuse_future_sessions(body)
    keys = None
    if idempotency_key is not None:
        keys = (
            repo.key_hash(principal.clinic, idempotency_key),
            repo.request_hash("sessions", client_id, body.model_dump(mode="json")),
        )
    at = repo.now()
    since = at - timedelta(seconds=settings.idempotency_key_ttl_s)
    try:
        with store.write() as conn:
            if keys is not None:
                repo.lock_key(conn, keys[0])
                repo.purge_idempotent(conn, since)
            if keys is not None and (
                prior := repo.find_idempotent(conn, principal.clinic, keys[0], since)
            ):
                if prior.request_hash != keys[1]:
                    raise HTTPException(422, KEY_REUSED)
                return JSONResponse(
                    prior.response,
                    status_code=prior.status_code,
                    headers={"Idempotent-Replayed": "true"},
                )
            episode = repo.upsert_episode(conn, principal.clinic, client_id, body.client, at)
            if episode is None:
                raise InvalidRequest([{"loc": ["client"], "reason": CLIENT_FIELDS_NEEDED}])
            _refuse_after_outcome(conn, episode, body)
            repo.put_sessions(conn, episode.id, body.sessions, at)
            if repo.session_count(conn, episode.id) > settings.max_sessions:
                raise InvalidRequest(
                    [{"loc": ["sessions"], "reason": episode_full(settings.max_sessions)}]
                )
            posted = [s["session_number"] for s in body.sessions]
            _rescore(conn, episode, request, principal, model, settings, at, first=posted)
            response = _client_risk(conn, episode, request_id_of(request))
            if keys is not None:
                payload = response.model_dump(mode="json")
                repo.save_idempotent(conn, principal.clinic, *keys, 200, payload, at)
    except IntegrityError:
        # Only the idempotency key's unique index can collide here, and lock_key makes a
        # second request of a key wait for the first: kept for safety.
        raise HTTPException(409, KEY_IN_FLIGHT, headers={"Retry-After": "1"}) from None
    return response


@router.post(
    "/{client_id}/outcome",
    operation_id="storeClientOutcome",
    response_model=OutcomeResponse,
    responses={**ERRORS, **BODY_ERRORS, **error_responses(404)},
    summary="Record how a client's episode ended (completed or dropout)",
)
def post_outcome(
    client_id: ClientId,
    body: OutcomeRequest,
    request: Request,
    principal: ClientsWriter,
    store: ClientStoreDep,
) -> OutcomeResponse:
    """Closes the episode: it leaves the open caseload, and monitoring reads the outcome. A
    second call corrects the first."""
    note_client(request, principal.clinic, client_id)
    if body.outcome_date > _latest_allowed():
        raise InvalidRequest([{"loc": ["outcome_date"], "reason": IN_THE_FUTURE}])
    with store.write() as conn:
        episode = repo.find_episode(conn, principal.clinic, client_id, for_update=True)
        if episode is None:
            raise HTTPException(404, NOT_FOUND)
        intake, last = repo.episode_dates(conn, episode.id)
        if body.outcome_date < intake:
            raise InvalidRequest([{"loc": ["outcome_date"], "reason": OUTCOME_BEFORE_INTAKE}])
        if last is not None and body.outcome_date < last:
            raise InvalidRequest([{"loc": ["outcome_date"], "reason": OUTCOME_BEFORE_SESSION}])
        repo.record_outcome(conn, episode, body.outcome, body.outcome_date, repo.now())
    return OutcomeResponse(
        client_id=client_id,
        outcome=body.outcome,
        outcome_date=body.outcome_date,
        request_id=request_id_of(request),
    )


@router.delete(
    "/{client_id}/outcome",
    operation_id="withdrawClientOutcome",
    status_code=204,
    response_class=Response,
    responses={**ERRORS, **BODY_ERRORS, **error_responses(404)},
    summary="Withdraw an outcome recorded by mistake: the episode is open again, and rescored",
)
def delete_outcome(
    client_id: ClientId,
    request: Request,
    principal: ClientsWriter,
    model: ModelDep,
    settings: SettingsDep,
    store: ClientStoreDep,
) -> Response:
    """Reopens the episode: it is back on the open caseload and may take later appointments.
    It is rescored by the served model in the same transaction, as every write is (a closed
    episode is not rescored when a new model is promoted, so its last score may be an older
    model's); ``GET .../risk`` shows the new score. When the served model refuses the stored
    history (a model promoted since may check more), the outcome is withdrawn all the same and
    the episode left unscored: its score fields are null and the caseload lists it as not
    scored yet, as after deleting its only appointment; storing appointments scores it again.
    The outcome is deleted, not kept as history; the audit trail records the withdrawal
    (``clients.outcome_withdraw``). 404 when the client is missing or has no outcome."""
    note_client(request, principal.clinic, client_id)
    request.state.model_version = model.version
    at = repo.now()
    with store.write() as conn:
        episode = repo.find_episode(conn, principal.clinic, client_id, for_update=True)
        if episode is None:
            raise HTTPException(404, NOT_FOUND)
        if not repo.withdraw_outcome(conn, episode, at):
            raise HTTPException(404, NO_OUTCOME)
        _rescore_stored(conn, episode, request, principal, model, settings, at)
    return Response(status_code=204)


@router.delete(
    "/{client_id}/sessions/{session_number}",
    operation_id="deleteClientSession",
    response_model=ClientRisk,
    responses={**ERRORS, **BODY_ERRORS, **error_responses(404)},
    summary="Delete a stored appointment entered by mistake, and rescore",
)
def delete_session(
    client_id: ClientId,
    session_number: Annotated[int, Path(ge=1, le=SESSION_NUMBER_MAX)],
    request: Request,
    principal: ClientsWriter,
    model: ModelDep,
    settings: SettingsDep,
    store: ClientStoreDep,
) -> Any:
    """The episode without that appointment is rescored and the score stored, in one
    transaction. Deleting its only appointment (a client stored by mistake) leaves the episode
    with none and no score: its score fields are null, the caseload lists it as not scored yet,
    and its earlier scores stay in the history; record an outcome to take it off the caseload,
    or store appointments again to score it. When the served model refuses what is left (a
    model promoted since may check more), the appointment is deleted all the same and the
    episode left unscored the same way. A missing client or appointment is a 404 (a repeated
    delete too)."""
    note_client(request, principal.clinic, client_id)
    request.state.model_version = model.version
    at = repo.now()
    with store.write() as conn:
        episode = repo.find_episode(conn, principal.clinic, client_id, for_update=True)
        if episode is None:
            raise HTTPException(404, NOT_FOUND)
        if not repo.delete_session(conn, episode, session_number, at):
            raise HTTPException(404, SESSION_NOT_FOUND)
        _rescore_stored(conn, episode, request, principal, model, settings, at)
        return _client_risk(conn, episode, request_id_of(request))


@router.get(
    "/{client_id}/risk",
    operation_id="getClientRisk",
    response_model=ClientRisk,
    responses={**ERRORS, **error_responses(404), **cursor_error_responses()},
    summary="A stored client's latest risk with its explanation, and optionally its history",
)
def get_risk(
    client_id: ClientId,
    request: Request,
    principal: ClientsReader,
    store: ClientStoreDep,
    history: Annotated[
        bool,
        Query(
            description="Add the stored scores, newest first, with their model versions, "
            "history_limit at a time (follow history_next_cursor)."
        ),
    ] = False,
    history_limit: Annotated[
        int,
        Query(
            ge=1,
            le=HISTORY_LIMIT_MAX,
            description=f"Scores per history page (default {HISTORY_LIMIT}, at most "
            f"{HISTORY_LIMIT_MAX}); with history=true.",
        ),
    ] = HISTORY_LIMIT,
    history_cursor: Annotated[
        str | None,
        Query(
            description="history_next_cursor of the previous history page (opaque); with "
            "history=true.",
        ),
    ] = None,
) -> ClientRisk:
    note_client(request, principal.clinic, client_id)
    after = None
    seal = request_cursor_seal(request) if history else None
    if seal is not None and history_cursor is not None:
        if len(history_cursor) > HISTORY_CURSOR_MAX_LENGTH:
            raise bad_cursor("history_cursor")
        try:
            after = repo.decode_history_cursor(seal, principal.clinic, history_cursor)
        except repo.HistoryCursorError:
            raise bad_cursor("history_cursor") from None
    with store.read() as conn:
        episode = repo.find_episode(conn, principal.clinic, client_id)
        if episode is None:
            raise HTTPException(404, NOT_FOUND)
        try:
            response = _client_risk(conn, episode, request_id_of(request),
                                    history=(history_limit, after, seal) if seal else None)  # fmt: skip
        except repo.HistoryCursorError:
            raise bad_cursor("history_cursor") from None
    if response.model is not None:
        request.state.model_version = response.model.version
    return response


def _rescore(
    conn: Connection,
    episode: StoredEpisode,
    request: Request,
    principal: Principal,
    model: LoadedModel,
    settings: ServiceSettings,
    at: datetime,
    *,
    first: list[int] | None = None,
) -> None:
    """Score the stored episode (the appointments numbered in ``first``, the posted ones,
    first) through the one scorer path and store the score, in the caller's transaction; the
    scorer's 422 names the posted body's fields."""
    episode_request = repo.episode_request(conn, episode, first=first or ())
    forget_clients(request)  # score_one notes the client again
    try:
        _, score = score_one(episode_request, request, principal, model, settings)
    except InvalidRequest as err:
        raise InvalidRequest(_as_posted(err.errors, len(first or ()))) from None
    repo.add_score(conn, episode, score, model_name=model.name,
                   model_version=model.version, reason="ingest", at=at)  # fmt: skip


def _rescore_stored(
    conn: Connection,
    episode: StoredEpisode,
    request: Request,
    principal: Principal,
    model: LoadedModel,
    settings: ServiceSettings,
    at: datetime,
) -> None:
    """Rescore the episode after a write without a body (a deleted appointment, a withdrawn
    outcome). An episode left with no appointment, or one whose stored history the served model
    refuses (a model promoted since may check more), is left unscored rather than the write
    refused: the caller's mistake is undone all the same, its score fields are null and the
    caseload lists it as not scored yet, and storing appointments scores it again."""
    if not repo.session_count(conn, episode.id):
        repo.clear_score(conn, episode, at)
        return
    try:
        _rescore(conn, episode, request, principal, model, settings, at)
    except InvalidRequest as err:
        # The contract's reasons name no submitted value; the client is not named.
        reasons = sorted({str(e["reason"]) for e in err.errors})
        logger.warning(
            "episode left unscored: model %s refuses its stored history (%s)",
            model.version, "; ".join(reasons)[:500],
        )  # fmt: skip
        repo.clear_score(conn, episode, at)


def _client_risk(
    conn: Connection,
    episode: StoredEpisode,
    request_id: str,
    *,
    history: tuple[int, int | None, CursorSeal] | None = None,
) -> ClientRisk:
    """The client's answer: its latest score (fields null when it has none) and, with
    ``history`` (page size, score id to continue after, the seal of the next page's cursor), a
    page of its history."""
    row = repo.latest_score(conn, episode.id)
    entries = next_cursor = None
    if history is not None:
        limit, after, seal = history
        found = repo.score_history(conn, episode.id, limit + 1, after_score_id=after)
        if len(found) > limit:
            found = found[:limit]
            next_cursor = repo.encode_history_cursor(seal, episode.clinic_id, found[-1].id)
        entries = [
            ScoreEntry(
                model=ModelRef(name=h.model_name, version=h.model_version),
                scored_at=h.scored_at,
                landmark=h.landmark,
                probability=h.probability,
                risk_band=h.band,
                top_driver=h.top_driver,
                reason=h.reason,
            )
            for h in found
        ]
    score: dict[str, Any] = dict.fromkeys(
        ("model", "landmark", "probability", "risk_band", "scored_at", "reason", "explanation")
    )
    if row is not None:
        score = {
            "model": {"name": row.model_name, "version": row.model_version},
            "landmark": row.landmark,
            "probability": row.probability,
            "risk_band": row.band,
            "scored_at": row.scored_at,
            "reason": row.reason,
            "explanation": row.explanation,
        }
    return ClientRisk.model_validate(
        {
            "client_id": episode.client_id,
            **score,
            "outcome": episode.outcome,
            "sessions_stored": repo.session_count(conn, episode.id),
            "request_id": request_id,
            "history": entries,
            "history_next_cursor": next_cursor,
        }
    )


def _refuse_future_sessions(body: SessionsRequest) -> None:
    latest = _latest_allowed()
    problems = [
        {"loc": ["sessions", i, "session_date"], "reason": IN_THE_FUTURE}
        for i, s in enumerate(body.sessions)
        if s["session_date"] > latest
    ]
    if problems:
        raise InvalidRequest(problems)


def _refuse_after_outcome(conn: Connection, episode: StoredEpisode, body: SessionsRequest) -> None:
    """409 when the episode is closed and an appointment is dated after its outcome date: the
    caseload would not show it, so the new risk would reach no clinician."""
    if episode.outcome is None:
        return
    closed = repo.outcome_date(conn, episode.id)
    if closed is not None and any(s["session_date"] > closed for s in body.sessions):
        raise HTTPException(409, AFTER_OUTCOME)


def _refuse_repeated_numbers(body: SessionsRequest) -> None:
    seen: set[int] = set()
    problems = []
    for i, s in enumerate(body.sessions):
        if s["session_number"] in seen:
            problems.append(
                {"loc": ["sessions", i, "session_number"], "reason": DUPLICATE_SESSION_NUMBER}
            )
        seen.add(s["session_number"])
    if problems:
        raise InvalidRequest(problems)


_CLIENT_FIELDS = ("therapist_id", "intake_date", "age", "gender", "referral_source")


def _as_posted(problems: list[dict[str, Any]], n_posted: int) -> list[dict[str, Any]]:
    """The scorer's problems on the rebuilt episode as paths into the posted body: its
    appointments come first in the rebuilt request (``sessions[i]`` is the body's), a stored
    one that conflicts is reported on ``sessions``, a client field under ``client``."""
    out = []
    for p in problems:
        loc = list(p["loc"])
        if loc and loc[0] == "sessions" and len(loc) > 1 and loc[1] >= n_posted:
            loc = ["sessions"]
        elif loc and loc[0] in _CLIENT_FIELDS:
            loc = ["client", *loc]
        out.append({"loc": loc, "reason": p["reason"]})
    return out
