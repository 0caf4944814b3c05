"""Authentication and authorisation building blocks: who is calling, for which clinic, with
which scopes.

Three modes, chosen explicitly with ``ALLIANCE_RISK_AUTH_MODE`` (there is no default, so auth
can never be off by omission):

``jwt``
    OAuth2 bearer JWTs (``Authorization: Bearer <token>``) from configured issuers, verified
    against each issuer's JWKS (a file, or an ``https`` URL fetched and cached). Asymmetric
    algorithms only: ``RS256``, ``RS384``, ``ES256``, ``ES384``. ``none`` and every ``HS*`` are
    refused, which also closes the classic key-confusion attack (an HS256 token "signed" with
    the issuer's public key PEM as the HMAC secret; RFC 8725 section 2.1). ``aud``, ``exp``,
    ``nbf``, ``iat``, ``iss`` and ``sub`` are required, plus the clinic claim.
``api_key``
    ``X-API-Key: <key>`` for small deployments. Only the header form is accepted: one way to
    send a key keeps the attack surface and the documentation small, and it cannot be confused
    with a bearer token in proxies that log ``Authorization`` differently. Keys are stored only
    as SHA-256 hashes, each bound to one clinic and a set of scopes (see ``hash_api_key``).
``dev``
    For ``make run`` on a workstation: bearer JWTs signed by a local ES256 key pair that
    ``ensure_dev_keys`` creates once; ``alliance-risk token`` mints them. Refused when
    ``ALLIANCE_RISK_DEPLOYMENT`` names a deployment (``compose`` and anything but ``local``).

Scopes: ``risk:read`` (score one client), ``risk:batch``, ``model:read``, ``model:admin``. The
SMART Backend Services scopes ``system/RiskAssessment.read`` and ``system/RiskAssessment.rs``
are accepted as ``risk:read``; any other scope in a token is ignored.

Error details are fixed strings: never the token, a claim value or a key. Log lines carry the
class of failure only. A verified token's claims are cached by the token's SHA-256 (at most
``jwks_cache_s`` and never past ``exp``), so a client reusing its token skips the signature
check.

Authentication can block on a JWKS fetch (see ``Authenticator``): call it from a worker
thread, never on the event loop. ``Authenticator.authenticate_known`` is the part that cannot
block (an API key, or a token already verified), and may run on the loop.

One module per job; this package re-exports their public names:

``settings``
    ``AuthSettings``, ``IssuerConfig``, the dev-mode guard and ``describe``.
``principal``
    ``Principal``, the scopes, ``AuthError``, ``require_scope`` and the challenge header.
``jwks``
    ``keys_from_jwks`` and ``JwksSource`` (issuers' keys, fetched and cached).
``caches``
    ``VerifiedTokenCache`` and ``JtiReplayCache``.
``authenticator``
    ``Authenticator``: headers in, ``Principal`` or ``AuthError`` out.
``api_keys``
    The hashed API-key file: generate, hash, load, verify.
``dev``
    Dev-mode keys (``ensure_dev_keys``) and tokens (``mint_dev_token``).
"""

from service.auth.api_keys import (
    API_KEY_MIN_CHARS,
    ApiKeyRecord,
    generate_api_key,
    hash_api_key,
    load_api_keys,
    verify_api_key,
)
from service.auth.authenticator import MAX_TOKEN_CHARS, REQUIRED_CLAIMS, Authenticator
from service.auth.caches import JtiReplayCache, VerifiedTokenCache
from service.auth.dev import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DEV_JWKS_FILE,
    DEV_PRIVATE_KEY_FILE,
    ensure_dev_keys,
    mint_dev_token,
)
from service.auth.jwks import JwksSource, JwksUnavailable, keys_from_jwks
from service.auth.principal import (
    API_KEY_HEADER,
    MODEL_ADMIN,
    MODEL_READ,
    REALM,
    RISK_BATCH,
    RISK_READ,
    SCOPES,
    SMART_ALIASES,
    AuthError,
    Method,
    Principal,
    normalise_scopes,
    require_scope,
)
from service.auth.settings import (
    ALGORITHMS,
    DEPLOYMENT_ENV,
    AuthMode,
    AuthSettings,
    DevModeRefused,
    IssuerConfig,
    check_dev_mode_allowed,
    default_dev_key_dir,
    describe,
)

__all__ = [
    "ALGORITHMS",
    "API_KEY_HEADER",
    "API_KEY_MIN_CHARS",
    "DEPLOYMENT_ENV",
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "DEV_JWKS_FILE",
    "DEV_PRIVATE_KEY_FILE",
    "MAX_TOKEN_CHARS",
    "MODEL_ADMIN",
    "MODEL_READ",
    "REALM",
    "REQUIRED_CLAIMS",
    "RISK_BATCH",
    "RISK_READ",
    "SCOPES",
    "SMART_ALIASES",
    "ApiKeyRecord",
    "AuthError",
    "AuthMode",
    "AuthSettings",
    "Authenticator",
    "DevModeRefused",
    "IssuerConfig",
    "JtiReplayCache",
    "JwksSource",
    "JwksUnavailable",
    "Method",
    "Principal",
    "VerifiedTokenCache",
    "check_dev_mode_allowed",
    "default_dev_key_dir",
    "describe",
    "ensure_dev_keys",
    "generate_api_key",
    "hash_api_key",
    "keys_from_jwks",
    "load_api_keys",
    "mint_dev_token",
    "normalise_scopes",
    "require_scope",
    "verify_api_key",
]
