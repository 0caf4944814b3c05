"""Who the caller is and what they may do: ``Principal``, the scopes, ``AuthError`` and the
``WWW-Authenticate`` challenge every refusal carries.

Scopes: ``risk:read`` (score one client), ``risk:batch``, ``model:read``, ``model:admin``,
``clients:read`` and ``clients:write`` (the client store's stored risk, and its sessions and
outcomes). The
SMART Backend Services scopes (v1 and v2 syntax) on RiskAssessment (``system/RiskAssessment.rs``,
``.read``) are accepted as ``risk:read``; ``system/Patient.rs`` and ``system/Observation.rs`` are
recognised and grant nothing alone (:func:`smart_scope`); any other scope is ignored. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

RISK_READ = "risk:read"  # score one client
RISK_BATCH = "risk:batch"  # score many clients in one request
MODEL_READ = "model:read"  # model card and version
MODEL_ADMIN = "model:admin"  # reload the model
CLIENTS_READ = "clients:read"  # read a stored client's risk and history (the store, issue 21)
CLIENTS_WRITE = "clients:write"  # store a client's sessions and outcome (rescores the client)
#: Every scope the service checks.
SCOPES = frozenset({RISK_READ, RISK_BATCH, MODEL_READ, MODEL_ADMIN, CLIENTS_READ, CLIENTS_WRITE})
#: SMART on FHIR v1 (``.read``) and v2 (``.rs`` = read + search) system scopes on the resource
#: this service produces, accepted as ``risk:read`` (SMART App Launch 2.x, "Scopes and Launch
#: Context"). :func:`smart_scope` reads the whole grammar; these are the documented forms.
SMART_ALIASES = {
    "system/RiskAssessment.read": RISK_READ,
    "system/RiskAssessment.rs": RISK_READ,
    "system/RiskAssessment.r": RISK_READ,
}
#: SMART system scopes by resource type: RiskAssessment (what the service produces) grants
#: ``risk:read`` when it allows reading; Patient and Observation (what the FHIR operation reads)
#: are recognised, so an EHR's usual backend-services token is valid, and grant nothing alone.
SMART_RESOURCES: dict[str, str | None] = {
    "RiskAssessment": RISK_READ,
    "Patient": None,
    "Observation": None,
}
#: ``system/<type or *>.<permissions>``: v1 ``read``/``write``/``*``, or v2 ``cruds`` letters
#: in that order. Granular v2 scopes (``?category=...``) narrow what a client may read in ways
#: this service cannot enforce, so they are not recognised.
_SMART_SCOPE = re.compile(
    r"system/(?P<kind>[A-Z][A-Za-z]*|\*)\.(?P<perms>read|write|\*|c?r?u?d?s?)"
)
API_KEY_HEADER = "X-API-Key"
REALM = "alliance-risk"

Method = Literal["jwt", "api_key", "dev"]


class AuthError(Exception):
    """A refused request: ``status`` 401 (no or bad credentials), 403 (missing scope) or 503
    (the issuer's keys are unreachable and none are cached).

    ``detail`` is a fixed string safe to return to the caller; ``www_authenticate`` is the
    ``WWW-Authenticate`` header value (RFC 6750 section 3) or None.
    """

    def __init__(self, status: int, detail: str, www_authenticate: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.www_authenticate = www_authenticate

    @property
    def headers(self) -> dict[str, str]:
        """Response headers for this error (``WWW-Authenticate`` when there is one)."""
        return {"WWW-Authenticate": self.www_authenticate} if self.www_authenticate else {}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller.

    Attributes
    ----------
    subject
        The token's ``sub`` (a user or client id at the issuer), or ``apikey:<key id>``.
    clinic
        The tenant every data access is confined to, from the token's clinic claim or the key's
        binding; never from the request body or path.
    scopes
        Recognised scopes only (SMART aliases already mapped to ``risk:read``).
    token_id
        The token's ``jti``; without one, ``sha256:`` and 16 hex digits of the token's hash (a
        stable id for rate limits, not reversible); the key id for API keys.
    method
        ``"jwt"``, ``"api_key"`` or ``"dev"``.
    issuer
        The token's ``iss`` (None for API keys): which registered issuer's configuration
        applies (the CDS Hooks edge reads its allowed FHIR servers).
    """

    subject: str
    clinic: str
    scopes: frozenset[str]
    token_id: str
    method: Method
    issuer: str | None = field(default=None, compare=False)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def normalise_scopes(raw: Iterable[str]) -> frozenset[str]:
    """Known scopes in ``raw``, SMART aliases mapped to ``risk:read``; anything else dropped."""
    out = set()
    for scope in raw:
        if scope in SCOPES:
            out.add(scope)
        elif (grant := smart_scope(scope)[1]) is not None:
            out.add(grant)
    return frozenset(out)


def smart_scope(scope: str) -> tuple[bool, str | None]:
    """``(recognised, scope granted)`` of a SMART system scope: ``system/RiskAssessment.rs``,
    ``.r``, ``.read``, ``.cruds``, ``.*`` and ``system/*.rs`` grant ``risk:read``;
    ``system/Patient.rs`` and ``system/Observation.rs`` (any permissions) are recognised and
    grant nothing; anything else is not a scope of this service."""
    match = _SMART_SCOPE.fullmatch(scope)
    if match is None or not match["perms"]:
        return False, None
    kind, perms = match["kind"], match["perms"]
    reads = perms in ("read", "*") or (perms != "write" and "r" in perms)
    if kind == "*":
        return True, RISK_READ if reads else None
    if kind not in SMART_RESOURCES:
        return False, None
    return True, SMART_RESOURCES[kind] if reads else None


def check_scope_names(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes, each checked to be known (configuration and minting refuse typos)."""
    names = list(scopes)
    unknown = sorted(s for s in names if s not in SCOPES and not smart_scope(s)[0])
    if unknown:
        known = sorted(SCOPES | set(SMART_ALIASES))
        raise ValueError(f"unknown scope(s) {unknown}; known: {known}")
    return normalise_scopes(names)


def challenge(method: Method, error: str | None = None, description: str | None = None,
              scope: str | None = None) -> str:  # fmt: skip
    """A ``WWW-Authenticate`` value: ``Bearer`` (RFC 6750) or ``ApiKey`` for key mode."""
    scheme = "ApiKey" if method == "api_key" else "Bearer"
    parts = [f'realm="{REALM}"']
    if method == "api_key":
        parts.append(f'header="{API_KEY_HEADER}"')
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return f"{scheme} " + ", ".join(parts)


def require_scope(principal: Principal, scope: str) -> None:
    """Raise ``AuthError(403)`` unless ``principal`` holds ``scope`` (one of ``SCOPES``).

    Scopes are not hierarchical: ``model:admin`` does not imply ``model:read``, nor
    ``risk:batch`` imply ``risk:read``; a client asks for what it uses.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {sorted(SCOPES)}")
    if scope not in principal.scopes:
        detail = f"this operation needs the '{scope}' scope"
        raise AuthError(403, detail, challenge(principal.method, "insufficient_scope", scope=scope))
