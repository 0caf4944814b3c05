"""The dashboard's signed session cookie and its CSRF checks.

Signing in exchanges an API key or a bearer token, checked by the service's one
:class:`~service.auth.Authenticator`, for a cookie that names the principal (subject, clinic,
scopes, token id, method) and a random CSRF token, signed with itsdangerous and valid for
:data:`SESSION_MAX_AGE_S`. The cookie never holds the key or the token: it cannot be replayed
against ``/v1``. It is ``HttpOnly`` (no script reads it), ``Secure`` (sent over HTTPS only;
browsers treat ``http://localhost`` and ``127.0.0.1`` as secure too) and ``SameSite=Strict``
(no other site's page can make the browser send it).

The signing key is derived from the audit key (an HMAC of a fixed label under it, in a domain
no audit ref has: :meth:`~service.audit.ClientRefs.derive`), so every worker of one ``serve`` and
every restart agree on it, and no new secret needs configuring; rotating the audit key signs
everyone out, and so did the upgrade that gave the derivation its domain. The sealed page cursors are keyed the same way,
under another label (:func:`service.store.deps.cursor_seal`).

Revocation: a cookie is refused before its expiry when its session was signed out (the
session id's digest is kept until the cookie would have expired, in the client store:
:class:`StoreSignedOut`, so every worker and a restart refuse it; when the store cannot be read
the cookie is refused too; when the list is full, the sign-out itself is refused with the 503
page and the cookie kept, never dropped while it would stay valid) or, for an API-key
session, when its key is no longer among the keys the service loaded (a key removed from the
keys file ends its sessions at the next restart). A token session lasts until the token's own
``exp`` or :data:`SESSION_MAX_AGE_S`, whichever is sooner: revoking a token at its issuer does
not end it sooner.

Writes (sign-out) carry the session's CSRF token in a hidden field (the synchronizer token
pattern) and must come with an ``Origin`` of this host; sign-in, which has no session yet,
needs the ``Origin`` check alone (OWASP CSRF cheat sheet).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from fastapi import Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from service.audit import ClientRefs
from service.auth import Principal
from service.store import repository
from service.store.db import Store, StoreUnavailable

logger = logging.getLogger(__name__)

COOKIE = "alliance_risk_dashboard"
#: Path the cookie is sent to: the dashboard only, never /v1.
COOKIE_PATH = "/dashboard"
#: A session lasts half an hour, then the clinician signs in again.
SESSION_MAX_AGE_S = 30 * 60
_SALT = "alliance-risk dashboard session v1"
#: The label the signing key is derived under (see the module docstring).
_KEY_LABEL = "\x00alliance-risk dashboard session signing key"


@dataclass(frozen=True)
class Session:
    """A signed-in clinician: who (as :class:`Principal`), the session's CSRF token, and when
    the session ends (Unix seconds: :data:`SESSION_MAX_AGE_S` after sign-in, or the token's
    ``exp`` if sooner: a session never outlives the credential it came from)."""

    principal: Principal
    csrf: str
    expires_at: float
    sid: str = ""  # random session id: what sign-out revokes (:class:`SignedOut`)


def signer(refs: ClientRefs) -> URLSafeTimedSerializer:
    """The cookie serializer, keyed by an HMAC of a fixed label under the audit key."""
    return URLSafeTimedSerializer(refs.derive(_KEY_LABEL), salt=_SALT)


def dump(session: Session, serializer: URLSafeTimedSerializer) -> str:
    """The cookie value of ``session`` (signed, time-stamped; not encrypted: nothing secret)."""
    p = session.principal
    return serializer.dumps({
        "sub": p.subject, "clinic": p.clinic, "scopes": sorted(p.scopes), "tid": p.token_id,
        "method": p.method, "iss": p.issuer, "csrf": session.csrf, "exp": session.expires_at,
        "sid": session.sid,
    })  # fmt: skip


def load(value: str | None, serializer: URLSafeTimedSerializer) -> Session | None:
    """The session of a cookie value, or None when it is missing, forged, malformed or older
    than :data:`SESSION_MAX_AGE_S`."""
    if not value:
        return None
    try:
        data = serializer.loads(value, max_age=SESSION_MAX_AGE_S)
        principal = Principal(
            subject=str(data["sub"]), clinic=str(data["clinic"]),
            scopes=frozenset(str(s) for s in data["scopes"]), token_id=str(data["tid"]),
            method=data["method"], issuer=data["iss"],
        )  # fmt: skip
        csrf = str(data["csrf"])
        expires_at = float(data["exp"])
        sid = str(data["sid"])
    except (BadSignature, KeyError, TypeError, ValueError):
        return None
    if time.time() >= expires_at:
        return None
    return Session(principal, csrf, expires_at, sid)


def new_session(principal: Principal, expires_at: float | None = None) -> Session:
    """A session for ``principal`` with a fresh CSRF token, ending at ``expires_at`` (the
    token's ``exp``) or after :data:`SESSION_MAX_AGE_S`, whichever is sooner."""
    end = time.time() + SESSION_MAX_AGE_S
    if expires_at is not None:
        end = min(end, expires_at)
    return Session(principal, secrets.token_urlsafe(24), end, secrets.token_urlsafe(16))


class SignOutsFull(StoreUnavailable):
    """``max_entries`` unexpired sign-outs are kept already: this one cannot be recorded, so it
    is refused (the 503 page: try again) rather than dropping a cookie that would stay valid.
    No entry is evicted to make room: a signed-out cookie that has not expired would pass
    again."""

    def __init__(self, max_entries: int) -> None:
        super().__init__("full")
        logger.warning(
            "dashboard sign-out refused: %d unexpired sign-outs are kept already (the most); "
            "the session stays valid until it is signed out or expires",
            max_entries,
        )


class SignedOut:
    """Session ids signed out in this process, each kept until its cookie would have expired
    (a service without a client store; :class:`StoreSignedOut` otherwise).

    Thread-safe. Bounded: past ``max_entries`` live entries a sign-out raises
    :class:`SignOutsFull` (it is not recorded, and the browser keeps the cookie).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def add(self, session: Session) -> None:
        now = time.time()
        with self._lock:
            if len(self._until) >= self._max:
                self._until = {k: t for k, t in self._until.items() if t > now}
            if session.sid not in self._until and len(self._until) >= self._max:
                raise SignOutsFull(self._max)
            self._until[session.sid] = session.expires_at

    def __contains__(self, session: object) -> bool:
        if not isinstance(session, Session):
            return False
        with self._lock:
            until = self._until.get(session.sid)
        return until is not None and until > time.time()


def max_age(session: Session) -> int:
    """Seconds the browser should keep the cookie."""
    return max(0, round(session.expires_at - time.time()))


def same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` (or, without one, its ``Referer``) names this host.

    A browser sends ``Origin`` with every form POST; a request with neither header is refused.
    """
    origin = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("host")
    if not origin or not host or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """The synchronizer token check, in constant time."""
    return submitted is not None and hmac.compare_digest(session.csrf, submitted)


class StoreSignedOut:
    """:class:`SignedOut` kept in the client store (table ``dashboard_signed_out``): every
    worker of ``serve --workers N``, every host behind one database, and a restart refuse a
    signed-out cookie. One row per signed-out session id (its SHA-256, never the cookie) until
    the cookie would have expired; expired rows are purged on each sign-out.

    Fail closed: both methods raise :class:`~service.store.db.StoreUnavailable` when the store
    cannot be reached, and the dashboard then refuses the cookie with a page that says why.
    Bounded: past ``max_entries`` unexpired sign-outs, :meth:`add` raises :class:`SignOutsFull`
    (the sign-out is refused, the cookie kept).
    """

    def __init__(self, store: Store, max_entries: int = 100_000) -> None:
        self._store = store
        self._max = max_entries

    def add(self, session: Session) -> None:
        expires = datetime.fromtimestamp(session.expires_at, UTC)
        with self._store.write() as conn:
            if not repository.sign_out(conn, _digest(session), expires, self._max):
                raise SignOutsFull(self._max)

    def __contains__(self, session: object) -> bool:
        if not isinstance(session, Session):
            return False
        with self._store.read() as conn:
            return repository.is_signed_out(conn, _digest(session))


def _digest(session: Session) -> str:
    return hashlib.sha256(session.sid.encode()).hexdigest()
