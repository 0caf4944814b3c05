"""Who may do what, and the record of it: authentication, clinic tenancy, rate limits and the
audit trail, as route dependencies plus one ASGI middleware.

Every request to a ``/v1`` route authenticates (never off; dev mode only when asked for). The
clinic always comes from the credential: a request about a client of another clinic gets the
same 404 as a client that does not exist. Every request to ``/v1`` leaves exactly one audit
record, or one per client for a batch, whatever its outcome (refusals included), and a request
that matches no route (a 404, or the 307 of a trailing slash) is recorded as
:data:`UNROUTED`. Who acts must fit the audit record: the authenticator refuses claims the record
would refuse, and every route's record is built and checked before the route body runs.

The credentials are declared to OpenAPI as two security schemes (``bearer``: a JWT, dev tokens
included; ``apiKey``: the ``X-API-Key`` header), so ``/docs`` has an Authorize button. Those
declarations check nothing: the :class:`~service.auth.Authenticator` is the one check.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import anyio.to_thread
import orjson
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.audit import AuditRecord, AuditRecordError, AuditWriteError, ClientRefs, utc_timestamp
from service.audit_log import AuditLog
from service.auth import API_KEY_HEADER, Authenticator, AuthError, Principal, require_scope
from service.auth.principal import challenge
from service.errors import PROBLEM_JSON, error_body
from service.limits import RateLimiter, rate_limited

logger = logging.getLogger(__name__)

#: The same answer for "no such client" and "a client of another clinic" (OWASP API1).
NOT_FOUND = "client not found"
AUDIT_UNAVAILABLE = "the audit trail is unavailable; try again later"

#: Route template -> audit action.
AUDITED = {
    "/v1/risk": "risk.read",
    "/v1/risk/batch": "risk.batch",
    "/v1/risk/what-if": "risk.what_if",
    "/v1/model": "model.read",
    "/v1/admin/reload": "model.reload",
    "/fhir/Patient/$dropout-risk": "risk.fhir",
    "/fhir/CodeSystem/alliance-risk": "fhir.code_system",
    "/cds-services": "cds.discovery",
    "/cds-services/{service_id}": "cds.hook",
    "/cds-services/{service_id}/feedback": "cds.feedback",
    "/v1/clients/{client_id}/sessions": "clients.sessions_write",
    "/v1/clients/{client_id}/outcome": "clients.outcome_write",
    "/v1/clients/{client_id}/sessions/{session_number}": "clients.session_delete",
    "/v1/clients/{client_id}/risk": "clients.risk_read",
    "/v1/clinics/{clinic_id}/caseload": "clients.caseload_read",
    "/dashboard/": "dashboard.caseload",
    "/dashboard/clients/{client_id}": "dashboard.client",
    "/dashboard/sign-in": "dashboard.sign_in",
    "/dashboard/sign-out": "dashboard.sign_out",
}
#: (method, route template) -> audit action, where a method's action differs from AUDITED's.
AUDITED_BY_METHOD = {("DELETE", "/v1/clients/{client_id}/outcome"): "clients.outcome_withdraw"}
#: Paths (and everything under them) whose every request is audited.
AUDITED_PREFIXES = ("/v1", "/cds-services", "/fhir", "/dashboard")
#: Audit action of a ``/v1`` request that matched no route (a 404, a trailing-slash redirect).
UNROUTED = "request.unrouted"
#: Status recorded for a request whose body never arrived in full (Request Timeout).
BODY_NOT_RECEIVED = 408

#: OpenAPI security schemes (documentation and the Authorize button of /docs only).
BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="A JWT from a configured issuer (auth mode jwt), or a dev token from "
    "`alliance-risk token` (auth mode dev).",
    auto_error=False,
)
API_KEY = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="apiKey",
    description="An API key from the hashed keys file (auth mode api_key).",
    auto_error=False,
)


@dataclass(frozen=True)
class Security:
    """The app's security components, built once in ``create_app``."""

    authenticator: Authenticator
    limiter: RateLimiter
    audit: AuditLog
    refs: ClientRefs


def outcome_of(status: int) -> str:
    """Audit outcome of an HTTP status."""
    if status < 400:
        return "ok"
    if status in (401, 403, 429):
        return "denied"
    if status == 404:
        return "not_found"
    if status in (400, 408, 413, 415, 422):
        return "invalid"
    if status in (412, 503):  # 412: the data a CDS hook needs could not be had (not our fault)
        return "unavailable"
    return "error"


#: Threads that authenticate (per worker), apart from the route threads: checking a token is
#: quick, but fetching an issuer's keys can wait up to the JWKS timeout, and that wait must hold
#: up neither the event loop nor scoring.
AUTH_THREADS = 4


async def authenticated(request: Request, *, audience: str | None = None) -> Principal:
    """The request's principal from the one authenticator, recorded on ``request.state`` once
    the audit record it will leave is known to be writable (else 401). ``audience``: the
    endpoint a CDS Hooks JWT must name (:mod:`service.cds.auth`).

    An API key or a token already verified is checked here, on the event loop (CPU work only:
    a thread hop would cost more than the check); a token whose signature must be checked, and
    every CDS Hooks token (single use: the replay check can be a shared file), goes to the
    authentication threads, since fetching its issuer's keys can block."""
    security: Security = request.app.state.security
    authenticator = security.authenticator
    try:
        principal = (
            None if audience is not None else authenticator.authenticate_known(request.headers)
        )
        if principal is None:
            principal = await _authenticate_in_thread(request, audience)
    except AuthError as err:
        raise HTTPException(err.status, err.detail, headers=err.headers) from None
    request.state.principal = principal
    try:
        # The record this request will leave, checked before any route body can act; the
        # authenticator already refuses claims the record would refuse.
        audit_template(request.scope, 200)
    except AuditRecordError:
        del request.state.principal
        detail = "credentials cannot be recorded in the audit trail"
        header = challenge(principal.method, "invalid_token", detail)
        raise HTTPException(401, detail, headers={"WWW-Authenticate": header}) from None
    return principal


async def _authenticate_in_thread(request: Request, audience: str | None) -> Principal:
    state = request.app.state
    if getattr(state, "auth_threads", None) is None:
        state.auth_threads = anyio.CapacityLimiter(AUTH_THREADS)
    check = state.security.authenticator.authenticate
    if audience is not None:
        check = functools.partial(check, audience=audience)
    principal: Principal = await anyio.to_thread.run_sync(
        check, request.headers, limiter=state.auth_threads
    )
    return principal


def scoped(scope: str, *, audit_first: bool = False) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the authenticated principal, holding ``scope``, within its rate limits.

    With ``audit_first`` (routes with side effects, such as a model reload), the request's audit
    record is written before the route acts, as answered 200, and a record that cannot be
    written is a 503 with nothing done: no action without its audit record. Such a route answers
    200 whatever it finds; if it fails unexpectedly, the middleware adds a second record with
    the status actually sent.

    A signature check runs on threads of its own (:data:`AUTH_THREADS`): it can block (a JWKS
    fetch waits up to the JWKS timeout) and must hold up neither the event loop nor the route
    threads that score; a known token or an API key is checked on the loop. The principal it
    sets on ``request.state`` lands in ``scope["state"]``, where :class:`AuditMiddleware` reads
    it.
    """

    async def dependency(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
        _key: Annotated[str | None, Depends(API_KEY)],
    ) -> Principal:
        principal = await authenticated(request)
        try:
            require_scope(principal, scope)
        except AuthError as err:
            raise HTTPException(err.status, err.detail, headers=err.headers) from None
        wait = request.app.state.security.limiter.check(
            {"clinic": principal.clinic, "token": principal.token_id}
        )
        if wait is not None:
            raise rate_limited(wait)
        if audit_first:
            if not AuditMiddleware.record(request.scope, 200):
                raise HTTPException(503, AUDIT_UNAVAILABLE, headers={"Retry-After": "30"})
            request.scope["state"]["audited_status"] = 200
        return principal

    return dependency


RiskReader = Annotated[Principal, Depends(scoped("risk:read"))]
BatchReader = Annotated[Principal, Depends(scoped("risk:batch"))]
ModelReader = Annotated[Principal, Depends(scoped("model:read"))]
ModelAdmin = Annotated[Principal, Depends(scoped("model:admin", audit_first=True))]


def same_clinic(principal: Principal, clinic_id: str) -> bool:
    return principal.clinic == clinic_id


def note_client(
    request: Request, clinic_id: str, client_id: str, *, status: int | None = None
) -> None:
    """Remember a client this request touched, for its audit record (a batch notes many).

    ``clinic_id`` is the clinic the request named the client under (the credential's for a
    stored client, the body's for a scoring request): the record holds the ref of that pair
    (:func:`service.audit.client_ref`), so one clinic's ``C0001`` never shares another's."""
    refs: ClientRefs = request.app.state.security.refs
    _notes(request).append((refs.client_ref(clinic_id, client_id), status))


def note_clients(
    request: Request, clinic_id: str, client_ids: Iterable[str], *, status: int | None
) -> None:
    """:func:`note_client` for many clients of one clinic with the same status, in order."""
    refs: ClientRefs = request.app.state.security.refs
    _notes(request).extend([(ref, status) for ref in refs.client_refs(clinic_id, client_ids)])


def forget_clients(request: Request) -> None:
    """Drop the clients noted so far (a route that notes a client early, then notes it
    again by its validated id, leaves one record for it)."""
    _notes(request).clear()


def note_denied(request: Request) -> None:
    """Record the request's outcome as ``denied`` whatever its status: the dashboard answers a
    missing, forged, expired or revoked session with a 303 to its sign-in page."""
    request.scope.setdefault("state", {})["audit_outcome"] = "denied"


def note_invalid(request: Request) -> None:
    """A batch item whose client could not be read: audited without a client reference."""
    _notes(request).append((None, 422))


def _notes(request: Request) -> list[tuple[str | None, int | None]]:
    # The dict behind request.state, where the audit middleware reads it (a missing attribute
    # of request.state costs a raised and caught AttributeError).
    state: dict[str, Any] = request.scope.setdefault("state", {})
    notes: list[tuple[str | None, int | None]] | None = state.get("audit_clients")
    if notes is None:
        notes = state["audit_clients"] = []
    return notes


class AuditMiddleware:
    """Writes the audit records of every ``/v1`` request before its response leaves.

    Inside the request-id middleware, so the records carry the ``request_id``; outside the
    routes, so refusals by authentication, validation or limits are recorded too. The records
    are written when the response starts, before any byte of its body is sent: if they cannot
    be written, the client gets a 503 instead of the data (no audit, no data).

    A request whose connection closed before its body was complete (the body deadline of
    ``service.connections``, or the client hanging up) is answered, and recorded, as
    :data:`BODY_NOT_RECEIVED` (408): the app would call the cut body a 400, but nothing was
    received to act on and the client gets no answer.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not any(path == p or path.startswith(p + "/") for p in AUDITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        recorded = False
        refused = False
        cut_off = False  # the connection closed before the whole body arrived
        body_done = False

        async def watch() -> dict[str, Any]:
            nonlocal cut_off, body_done
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            elif message["type"] == "http.disconnect" and not body_done:
                cut_off = True
            return message

        async def capture(message: dict[str, Any]) -> None:
            nonlocal recorded, refused
            if refused:
                return  # the app's own body is dropped: the client already has the 503
            if message["type"] == "http.response.start":
                recorded = True
                if cut_off:
                    message = {**message, "status": BODY_NOT_RECEIVED}
                if not self.record(scope, message["status"]):
                    refused = True
                    await _send_unaudited(scope, send)
                    return
            await send(message)

        try:
            await self.app(scope, watch, capture)
        finally:
            if not recorded:  # the app raised before responding: the outer layer sends a 500
                self.record(scope, 500)

    @staticmethod
    def record(scope: Mapping[str, Any], status: int) -> bool:
        """Write the request's records as answered ``status`` (nothing if they were already
        written for that status, see :func:`scoped`); False if the audit log refused them."""
        state = scope.get("state", {})
        if state.get("audited_status") == status:
            return True
        security: Security = scope["app"].state.security
        clients: list[tuple[str | None, int | None]] = state.get("audit_clients") or [(None, None)]
        forced: str | None = state.get("audit_outcome")  # see note_denied
        items = []
        for ref, item_status in clients:
            effective = status if item_status is None else item_status
            items.append((ref, effective, forced or outcome_of(effective)))
        try:
            security.audit.write_batch(audit_template(scope, status), items)
        except (AuditWriteError, AuditRecordError) as exc:
            logger.error("audit record could not be written; response withheld",
                         extra={"fields": {"request_id": state.get("request_id"),
                                           "error": type(exc).__name__}})  # fmt: skip
            return False
        return True


def audit_template(scope: Mapping[str, Any], status: int) -> AuditRecord:
    """The audit record of a ``/v1`` request answered with ``status``, before its clients are
    filled in (:meth:`AuditRecord.batch_lines`); :class:`AuditRecordError` if a field does not
    fit the record."""
    state = scope.get("state", {})
    route = scope.get("route")
    path = getattr(route, "path", "")
    action = (
        UNROUTED
        if route is None
        else (
            AUDITED_BY_METHOD.get((str(scope.get("method")), str(path)))
            or AUDITED.get(path, UNROUTED)
        )
    )
    app = scope["app"]
    principal: Principal | None = state.get("principal")
    store = getattr(app.state, "store", None)
    current = None if store is None else store.current
    version = state.get("model_version") or (None if current is None else current.version)
    return AuditRecord(
        time=utc_timestamp(),  # one request, one moment: its records share it
        subject=None if principal is None else principal.subject,
        clinic=None if principal is None else principal.clinic,
        action=action,
        outcome=outcome_of(status),  # type: ignore[arg-type]
        status=status,
        request_id=str(state.get("request_id", "")),
        model_version=version,
        correlation_ref=state.get("correlation_ref"),
    )


async def _send_unaudited(scope: dict[str, Any], send: Any) -> None:
    request_id = str(scope.get("state", {}).get("request_id", ""))
    body = orjson.dumps(
        error_body("the audit trail is unavailable; try again later", request_id, status=503)
    )
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"30")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
