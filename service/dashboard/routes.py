"""The dashboard's pages under ``/dashboard/``: sign-in, the caseload, a client.

Server-rendered HTML (Jinja2) with charts as inline SVG, no script at all; the stylesheet is
served from the package (``/dashboard-static/``), so the pages work on a clinic network without
internet. Every response carries a strict Content-Security-Policy and ``Cache-Control:
no-store`` (pages name clients), and ``Referrer-Policy: same-origin`` (their URLs name clients too: no other site sees them; ``no-referrer`` would make the browser send ``Origin: null`` with the forms, which the CSRF check refuses).

Who may look: a clinician signs in with an API key or a bearer token, checked by the service's
one authenticator, and gets a signed session cookie (:mod:`service.dashboard.session`); the
pages then read their clinic's clients only, with the ``clients:read`` scope, within the same
rate limits as ``/v1``. Every page re-checks its session (:func:`_current`): not signed out, and
for an API-key session, its key still loaded. Every request under ``/dashboard`` is audited by
:class:`~service.security.AuditMiddleware` like ``/v1``: the caseload notes every client it
lists, as ``/v1/clinics/{clinic_id}/caseload`` does, and the client page its client (as the
audit's keyed reference, never the id); a request without a valid session is recorded as
``denied`` (its answer is a 303 to the sign-in page).
"""

from __future__ import annotations

import logging
import threading
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio
import anyio.to_thread
import jwt
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from features.profiles import infer_profile
from service.auth import API_KEY_HEADER, AuthError
from service.auth.principal import CLIENTS_READ
from service.dashboard import session as sessions
from service.dashboard import source, views
from service.limits import retry_after_header
from service.security import AUTH_THREADS, Security, note_client, note_clients, note_denied
from service.store.caseload import (
    CaseloadFilters,
    CaseloadOrder,
    CursorError,
)
from service.store.db import Store, StoreUnavailable
from service.store.deps import request_cursor_seal

logger = logging.getLogger(__name__)

BASE = "/dashboard"
STATIC = "/dashboard-static"
STATIC_DIR = Path(str(files("service.dashboard") / "static"))
TEMPLATES = Jinja2Templates(directory=str(files("service.dashboard") / "templates"))

#: No script, no plugin, no framing, forms post here only; styles and images from this origin.
CSP = (
    "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
#: The one message of a refused sign-in: nothing that tells a guess how close it came.
SIGN_IN_FAILED = "Sign-in failed: the key or token was not accepted. Check it and try again."
NO_SCOPE = "This key or token does not give access to the dashboard (it needs clients:read)."

router = APIRouter(prefix=BASE, include_in_schema=False)
_SIGNED_OUT_LOCK = threading.Lock()


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = context.pop("session", None)
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "base": BASE,
            "static_url": STATIC,
            "principal": None if session is None else session.principal,
            "csrf": None if session is None else session.csrf,
            **context,
        },
        status_code=status,
    )
    response.headers.update(HEADERS)
    return response


def _error(request: Request, status: int, heading: str, message: str,
           session: sessions.Session | None = None,
           headers: dict[str, str] | None = None) -> HTMLResponse:  # fmt: skip
    response = _page(request, "error.html", status, heading=heading, message=message,
                     session=session)  # fmt: skip
    response.headers.update(headers or {})
    return response


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse(f"{BASE}/sign-in", status_code=303, headers=HEADERS)


def _refused(request: Request) -> RedirectResponse:
    """No valid session: to the sign-in page, audited as ``denied``."""
    note_denied(request)
    return _to_sign_in()


def _security(request: Request) -> Security:
    return request.app.state.security


def _client_store(request: Request) -> Store | None:
    return getattr(request.app.state, "client_store", None)


def _signed_out(request: Request) -> sessions.SignedOut | sessions.StoreSignedOut:
    """The sign-out list: in the client store (every worker, every restart), else, without
    one, this process's."""
    state = request.app.state
    with _SIGNED_OUT_LOCK:  # one list per app, even when the first pages come at once
        if getattr(state, "dashboard_signed_out", None) is None:
            store = _client_store(request)
            state.dashboard_signed_out = (
                sessions.SignedOut() if store is None else sessions.StoreSignedOut(store)
            )
    return state.dashboard_signed_out


def _current(request: Request) -> sessions.Session | None:
    """The request's signed-in session, recorded for its audit record; None: sign in first
    (no cookie, a forged or expired one, a signed-out session, or an API key no longer
    loaded). Raises :class:`StoreUnavailable` when the sign-out list cannot be read: the
    cookie is refused (fail closed), with :func:`_cannot_check`'s page."""
    security = _security(request)
    session = sessions.load(request.cookies.get(sessions.COOKIE), sessions.signer(security.refs))
    if session is None or CLIENTS_READ not in session.principal.scopes:
        return None
    if session in _signed_out(request):
        return None
    p = session.principal
    if p.method == "api_key" or security.authenticator.mode == "api_key":
        key = security.authenticator.api_key(p.token_id) if p.method == "api_key" else None
        if key is None or key.clinic != p.clinic or CLIENTS_READ not in key.scopes:
            return None
    request.state.principal = p
    return session


def _limited(request: Request, keys: dict[str, str]) -> HTMLResponse | None:
    wait = _security(request).limiter.check(keys)
    if wait is None:
        return None
    return _error(request, 429, "Too many requests", "Please wait a moment and try again.",
                  headers={"Retry-After": retry_after_header(wait)})  # fmt: skip


def _signed_in(request: Request) -> sessions.Session | Response:
    """The signed-in session, or the answer to give instead (sign-in redirect; 503 when the
    sign-out list cannot be read)."""
    try:
        session = _current(request)
    except StoreUnavailable as exc:
        return _cannot_check(request, exc)
    return _refused(request) if session is None else session


def _open_page(request: Request) -> tuple[sessions.Session, Store] | Response:
    """What every page does first: the signed-in session, the rate limit, the client store.

    Returns the session and store, or the answer to give instead (sign-in redirect, 429, 503).
    """
    session = _signed_in(request)
    if isinstance(session, Response):
        return session
    p = session.principal
    if (limited := _limited(request, {"clinic": p.clinic, "token": p.token_id})) is not None:
        return limited
    store = _client_store(request)
    if store is None:
        return _error(request, 503, "No client store",
                      "This service has no client store configured.", session)  # fmt: skip
    return session, store


# -- sign-in and sign-out ------------------------------------------------------------------------


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request) -> HTMLResponse:
    return _sign_in(request)


def _sign_in(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    mode = _security(request).authenticator.mode
    credential = "API key" if mode == "api_key" else "access token"
    return _page(request, "sign_in.html", status, error=error, credential=credential,
                 minutes=sessions.SESSION_MAX_AGE_S // 60)  # fmt: skip


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request, credential: Annotated[str, Form(max_length=16_384)] = ""
) -> Response:
    """Check the pasted key or token with the service's authenticator and start a session."""
    if not sessions.same_origin(request):
        return _error(request, 403, "Sign-in refused", "The form did not come from this site.")
    host = request.client.host if request.client else "unknown"
    # Every attempt counts against the limits of /v1, keyed here by the caller's address.
    if (limited := _limited(request, {"token": f"dashboard-sign-in:{host}"})) is not None:
        return limited
    security = _security(request)
    value = credential.strip()
    if security.authenticator.mode == "api_key":
        headers = {API_KEY_HEADER: value}
    else:
        headers = {"Authorization": f"Bearer {value}"}
    state = request.app.state
    if getattr(state, "auth_threads", None) is None:
        state.auth_threads = anyio.CapacityLimiter(AUTH_THREADS)
    try:
        principal = await anyio.to_thread.run_sync(
            security.authenticator.authenticate, headers, limiter=state.auth_threads
        )
    except AuthError as err:
        status = 503 if err.status == 503 else 401
        return _sign_in(request, status, SIGN_IN_FAILED)
    request.state.principal = principal  # the audit record names who signed in
    if CLIENTS_READ not in principal.scopes:
        return _sign_in(request, 403, NO_SCOPE)
    session = sessions.new_session(principal, _token_expiry(headers))
    response = RedirectResponse(f"{BASE}/", status_code=303, headers=HEADERS)
    response.set_cookie(
        sessions.COOKIE, sessions.dump(session, sessions.signer(security.refs)),
        max_age=sessions.max_age(session), path=sessions.COOKIE_PATH,
        secure=True, httponly=True, samesite="strict",
    )  # fmt: skip
    return response


def _token_expiry(headers: dict[str, str]) -> float | None:
    """The ``exp`` of a bearer token the authenticator has just accepted (None for API keys)."""
    value = headers.get("Authorization")
    if value is None:
        return None
    claims = jwt.decode(value.split(" ", 1)[1], options={"verify_signature": False})
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None


@router.post("/sign-out")
def sign_out(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
    """Blocking (the sign-out list is in the client store): a ``def`` route, in the thread
    pool."""
    session = _signed_in(request)
    if isinstance(session, Response):
        return session
    if not (sessions.same_origin(request) and sessions.csrf_ok(session, csrf)):
        return _error(request, 403, "Sign-out refused",
                      "The form did not come from this page. Reload the page and try again.",
                      session=session)  # fmt: skip
    try:
        _signed_out(request).add(session)
    except StoreUnavailable as exc:
        # Also when the sign-out list is full (SignOutsFull): the cookie is kept, not dropped
        # while it would stay valid.
        return _error(request, 503, "Sign-out not recorded",
                      "The client store cannot be reached or is busy just now, so the sign-out "
                      "could not be recorded and you are still signed in. Try again in a few "
                      "seconds.", session,
                      headers={"Retry-After": str(exc.retry_after_s)})  # fmt: skip
    response = _to_sign_in()
    response.delete_cookie(sessions.COOKIE, path=sessions.COOKIE_PATH, secure=True,
                           httponly=True, samesite="strict")  # fmt: skip
    return response


# -- pages -----------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def caseload_page(
    request: Request,
    therapist: Annotated[str | None, Query(max_length=128)] = None,
    band: Annotated[str | None, Query(max_length=16)] = None,
    sort: Annotated[str, Query(max_length=16)] = "probability",
    order: Annotated[str, Query(max_length=4)] = "desc",
    # No max_length: an over-long cursor is refused by decode_cursor, as the 400 page.
    cursor: Annotated[str | None, Query()] = None,
) -> Response:
    """The clinic's open episodes: band, risk, change in a week, trend, main reason."""
    opened = _open_page(request)
    if isinstance(opened, Response):
        return opened
    session, store = opened
    p = session.principal
    query = _Query(therapist or None, band if band in views.BANDS else None,
                   sort if sort in views.SORTS else "probability",
                   "asc" if order == "asc" else "desc", cursor or None)  # fmt: skip
    filters = CaseloadFilters(therapist_id=query.therapist, band=query.band)  # type: ignore[arg-type]
    ordering = CaseloadOrder(query.sort, query.order == "desc")  # type: ignore[arg-type]
    try:
        page = source.read_caseload(store, p.clinic, filters, query.cursor, source.PAGE_ROWS,
                                    order=ordering,
                                    seal=request_cursor_seal(request))  # fmt: skip
    except CursorError:
        return _error(request, 400, "Page not found",
                      "That page link has expired. Start again from the first page.", session)  # fmt: skip
    except StoreUnavailable as exc:
        return _unavailable(request, session, exc)
    # One audit record per client shown, as the JSON caseload writes.
    note_clients(request, p.clinic, [r.client_id for r in page.rows], status=200)
    shown = views.caseload_rows(page)
    versions = sorted({r.model_version for r in page.rows if r.model_version})
    return _page(
        request, "caseload.html", session=session, rows=shown, query=query,
        therapists=page.therapists, bands=views.BANDS, sorts=views.SORTS, versions=versions,
        sort_link=lambda col: _sort_link(query, col), aria_sort=lambda col: _aria_sort(query, col),
        next_url=_url(query, cursor=page.next_cursor) if page.next_cursor else None,
        first_url=_url(query, cursor=None),
    )  # fmt: skip


@router.get("/clients/{client_id}", response_class=HTMLResponse)
def client_page(request: Request, client_id: str) -> Response:
    """One client: trajectory by element with ruptures, attendance, drivers and focus."""
    opened = _open_page(request)
    if isinstance(opened, Response):
        return opened
    session, store = opened
    p = session.principal
    if len(client_id) > 128:
        return _not_found(request, session)
    note_client(request, p.clinic, client_id)
    try:
        record = source.read_client(store, p.clinic, client_id)
    except StoreUnavailable as exc:
        return _unavailable(request, session, exc)
    if record is None:
        return _not_found(request, session)
    profile = _profile(request, record)
    if profile is None:
        return _error(request, 503, "No model loaded",
                      "The client's ratings cannot be drawn until a model is loaded.", session)  # fmt: skip
    return _page(request, "client.html", session=session, v=views.client_view(record, profile))


def _profile(request: Request, record: views.ClientRecord) -> Any:
    """The instrument of the loaded model, else the one the stored ratings name."""
    model = request.app.state.store.current
    if model is not None:
        return model.scorer.profile
    names = {k for a in record.appointments for k in a.ratings}
    return infer_profile(f"alliance_{n}" for n in names)


def _not_found(request: Request, session: sessions.Session) -> HTMLResponse:
    return _error(request, 404, "Client not found",
                  "There is no client with that id in your clinic's caseload.", session)  # fmt: skip


def _cannot_check(request: Request, exc: StoreUnavailable) -> HTMLResponse:
    """The sign-out list cannot be read: the cookie is refused (a signed-out copy must not
    pass), audited as ``denied``, with a page that says why and when to retry."""
    note_denied(request)
    return _error(request, 503, "Client store unavailable",
                  "Your session cannot be checked because the client store cannot be reached "
                  "just now. Try again in a few seconds.",
                  headers={"Retry-After": str(exc.retry_after_s)})  # fmt: skip


def _unavailable(
    request: Request, session: sessions.Session, exc: StoreUnavailable
) -> HTMLResponse:
    return _error(request, 503, "Client store unavailable",
                  "The client store cannot be reached just now. Try again in a few seconds.",
                  session, headers={"Retry-After": str(exc.retry_after_s)})  # fmt: skip


class _Query:
    """The caseload's query parameters, checked (unknown values fall back to defaults)."""

    def __init__(self, therapist: str | None, band: str | None, sort: str, order: str,
                 cursor: str | None) -> None:  # fmt: skip
        self.therapist, self.band, self.sort, self.order, self.cursor = (
            therapist,
            band,
            sort,
            order,
            cursor,
        )


def _url(query: _Query, **changes: Any) -> str:
    params = {"therapist": query.therapist, "band": query.band, "sort": query.sort,
              "order": query.order, "cursor": query.cursor, **changes}  # fmt: skip
    return f"{BASE}/?" + urlencode({k: v for k, v in params.items() if v})


def _sort_link(query: _Query, column: str) -> Markup:
    """A column heading that sorts by it (again: the other way round); the page's filters kept,
    the cursor dropped (a new order starts at the first page)."""
    current = query.sort == column
    order = ("asc" if query.order == "desc" else "desc") if current else "desc"
    if column in ("client", "therapist") and not current:
        order = "asc"
    arrow = ("▼" if query.order == "desc" else "▲") if current else ""
    label = views.SORTS[column]
    state = f", sorted {'descending' if query.order == 'desc' else 'ascending'}" if current else ""
    return Markup(
        f'<a href="{escape(_url(query, sort=column, order=order, cursor=None))}">'
        f'{escape(label)}<span aria-hidden="true"> {arrow}</span>'
        f'<span class="visually-hidden">{state}</span></a>'
    )


def _aria_sort(query: _Query, column: str) -> Markup:
    if query.sort != column:
        return Markup("")
    return Markup(f'aria-sort="{"descending" if query.order == "desc" else "ascending"}"')
