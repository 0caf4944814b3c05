"""Who calls a CDS service: the EHR, by a signed JWT per CDS Hooks 2.0 ("Trusting CDS Clients").

The token is checked by the service's one :class:`~service.auth.Authenticator` with the
endpoint's URL as the audience (``aud`` must name ``<cds_public_url>/cds-services/<id>``, or
``.../feedback``), the CDS Hooks claim set (``iss``, ``aud``, ``exp``, ``iat``, ``jti``),
header ``typ`` JWT, a lifetime ``exp - iat`` of at most ``cds_max_token_lifetime_s``,
asymmetric algorithms only, the ``iss`` allowlist with each issuer's JWKS, and single use: a
``jti`` seen before is refused (the replay cache, shared by the workers of ``serve --workers
N``). Only an issuer registered as an EHR may call (``IssuerConfig.clinic`` set; dev mode
aside), and the clinic is that one. No scope is needed: the issuer's registration is the
grant. Then the same rate limits and audit check as every ``/v1`` route.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from service.auth import Principal
from service.cds.services import SERVICES
from service.limits import rate_limited
from service.security import Security, authenticated

NOT_CONFIGURED = (
    "CDS Hooks is not configured: set ALLIANCE_RISK_CDS_PUBLIC_URL to this service's public URL"
)
UNKNOWN_SERVICE = "no such CDS service"


async def authenticate(request: Request, service_id: str, *, feedback: bool) -> Principal:
    """The calling EHR's principal for ``service_id`` (404 unknown service, 503 not configured,
    401 refused token, 429 rate limited)."""
    if service_id not in SERVICES:
        raise HTTPException(404, UNKNOWN_SERVICE)
    public = request.app.state.settings.cds_public_url
    if public is None:
        raise HTTPException(503, NOT_CONFIGURED)
    audience = f"{public}/cds-services/{service_id}" + ("/feedback" if feedback else "")
    principal = await authenticated(request, audience=audience)
    security: Security = request.app.state.security
    wait = security.limiter.check({"clinic": principal.clinic, "token": principal.token_id})
    if wait is not None:
        raise rate_limited(wait)
    return principal


async def hook_client(request: Request, service_id: str) -> Principal:
    return await authenticate(request, service_id, feedback=False)


async def feedback_client(request: Request, service_id: str) -> Principal:
    return await authenticate(request, service_id, feedback=True)
