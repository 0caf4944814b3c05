"""``Authenticator``: turns request headers into a ``Principal`` per ``AuthSettings``.

In modes ``jwt`` and ``dev`` it parses the bearer token, picks the issuer's key from its
``JwksSource``, verifies the signature and the required claims with PyJWT (the algorithms come
from the key's type, never from the token's header), then reads the clinic, subject, scopes and
``jti`` into a ``Principal``. In mode ``api_key`` it matches ``X-API-Key`` against the hashed
key file. Every refusal is an ``AuthError`` with a fixed detail and one log line naming the
class of failure: never the token, a claim value or a key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from service.audit import MAX_TEXT, is_audit_text
from service.auth.api_keys import ApiKeyRecord, load_api_keys, verify_api_key
from service.auth.caches import JtiReplayCache, ReplayCache, VerifiedTokenCache
from service.auth.dev import DEV_AUDIENCE, DEV_ISSUER, DEV_JWKS_FILE, ensure_dev_keys
from service.auth.jwks import JwksSource, JwksUnavailable
from service.auth.principal import (
    API_KEY_HEADER,
    AuthError,
    Principal,
    challenge,
    normalise_scopes,
)
from service.auth.settings import ALGORITHMS, AuthMode, AuthSettings, IssuerConfig

# The package's one logger name, as before the split: log filters and alerts key on it.
logger = logging.getLogger("service.auth")

#: A bearer token longer than this is refused before any parsing (cheap DoS guard).
MAX_TOKEN_CHARS = 8192
#: Claims every JWT must carry (the clinic claim is checked separately, by its configured name).
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat")
#: Claims of a CDS Hooks client's JWT (CDS Hooks 2.0, "Trusting CDS Clients"): no sub, no nbf.
CDS_HOOKS_CLAIMS = ("iss", "aud", "exp", "iat", "jti")


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT before verification, only to pick the issuer and key.

    Lenient on purpose, and cheaper than PyJWT's strict segment check; the strict parse and
    every check happen in ``jwt.decode`` right after.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not three segments")
    header, payload = (
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2]
    )
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ValueError("segments are not JSON objects")
    return header, payload


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (Starlette's ``Headers`` already is; a dict is not)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def _scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (RFC 8693/9068: space-separated) or ``scp`` (a list, as some
    identity providers send)."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return normalise_scopes(raw.split())
    if isinstance(raw, list):
        return normalise_scopes(s for s in raw if isinstance(s, str))
    return frozenset()


#: PyJWT exception -> (reason code for logs, fixed detail for the caller). First match wins.
_JWT_FAILURES: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "token is not yet valid"),
    (jwt.InvalidAudienceError, "audience", "token audience is not accepted"),
    (jwt.InvalidIssuerError, "issuer", "token issuer is not accepted"),
    (jwt.InvalidIssuedAtError, "iat", "token issued-at time is invalid"),
    (jwt.InvalidSignatureError, "signature", "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "algorithm", "token algorithm is not accepted"),
)


class Authenticator:
    """Turns request headers into a ``Principal`` per ``AuthSettings``.

    Built once per app. The constructor reads the API key file (mode api_key) or creates/loads
    the dev key pair (mode dev); JWKS are loaded lazily or by ``warm()``.

    ``authenticate`` and ``warm`` are blocking calls: when an issuer's cached keys have expired
    or a token names an unknown ``kid``, they fetch the JWKS and may block for up to
    ``jwks_timeout_s`` (a fetch gives up after that, though a single read already under way may
    add up to another ``jwks_timeout_s``, and name resolution its own time); concurrent callers
    for the same issuer wait for that one fetch. Call them from a thread, never on the event
    loop: FastAPI runs plain ``def`` dependencies in its thread pool, and ``warm()`` at start-up
    belongs in a worker thread too. ``authenticate_known`` is the part that never blocks (an API
    key, or a token already verified), for the event loop. They are thread-safe: the caches and
    each key source have their own lock, and nothing else changes after construction.
    """

    def __init__(self, settings: AuthSettings, *, replay_cache: ReplayCache | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.settings = settings
        self.mode: AuthMode = settings.mode
        # Not ``or``: an empty cache has length 0 and would be replaced by a private one.
        self.replay_cache: ReplayCache = (
            JtiReplayCache(settings.replay_cache_size) if replay_cache is None else replay_cache
        )
        self.verified = VerifiedTokenCache(
            settings.verified_cache_size, settings.jwks_cache_s, settings.leeway_s,
            clock=wall_clock,
        )  # fmt: skip
        self._api_keys: tuple[ApiKeyRecord, ...] = ()
        issuers: list[IssuerConfig] = []
        if settings.mode == "api_key":
            assert settings.api_keys_file is not None  # AuthSettings guarantees it
            self._api_keys = load_api_keys(settings.api_keys_file)
        elif settings.mode == "dev":
            ensure_dev_keys(settings.dev_key_dir)
            issuers = [
                IssuerConfig(
                    issuer=DEV_ISSUER,
                    audience=DEV_AUDIENCE,
                    jwks_file=settings.dev_key_dir / DEV_JWKS_FILE,
                )
            ]
        else:
            issuers = list(settings.issuers)
        self._sources = {
            cfg.issuer: JwksSource(
                cfg,
                cache_s=settings.jwks_cache_s,
                timeout_s=settings.jwks_timeout_s,
                cooldown_s=settings.jwks_refetch_cooldown_s,
                clock=clock,
            )
            for cfg in issuers
        }

    def warm(self) -> dict[str, bool]:
        """Load every issuer's JWKS now; issuer -> whether keys are available."""
        return {issuer: source.warm() for issuer, source in self._sources.items()}

    def _refuse(self, reason: str, detail: str, error: str | None = "invalid_token") -> AuthError:
        """A 401 with a fixed ``detail``; ``error=None`` when no credentials came at all (RFC
        6750 section 3.1: then the challenge carries no error code)."""
        logger.info(
            "authentication refused", extra={"fields": {"reason": reason, "method": self.mode}}
        )
        description = detail if error else None
        return AuthError(401, detail, challenge(self.mode, error, description))

    def authenticate(self, headers: Mapping[str, str], *, single_use: bool = False,
                     audience: str | None = None) -> Principal:  # fmt: skip
        """The caller's ``Principal``, or ``AuthError`` (401; 503 if keys are unreachable).

        Parameters
        ----------
        headers
            Request headers (case-insensitive names): ``Authorization: Bearer <jwt>`` in modes
            jwt and dev, ``X-API-Key`` in mode api_key.
        single_use
            Require a ``jti`` and refuse a token presented before (CDS Hooks); JWT modes only.
        audience
            A CDS Hooks call: the endpoint URL the token's ``aud`` must name (instead of the
            issuer's configured audience), the CDS Hooks claim set (``iss``, ``aud``, ``exp``,
            ``iat``, ``jti``; ``sub`` and ``nbf`` optional) and single use. Never served from
            the verified-token cache. Refused in mode api_key (the spec requires a JWT).
        """
        if self.mode == "api_key" and audience is not None:
            raise self._refuse("method", "CDS Hooks calls need a signed JWT")
        if self.mode == "api_key":
            return self._authenticate_key(_header(headers, API_KEY_HEADER))
        single_use = single_use or audience is not None
        return self._verify_jwt(self._bearer(headers), single_use=single_use, audience=audience)

    def authenticate_known(self, headers: Mapping[str, str]) -> Principal | None:
        """:meth:`authenticate` (without ``single_use`` or ``audience``) when it needs no
        signing key: an API key (a hash compared with the loaded keys), or a bearer token whose
        claims are in the verified-token cache. None when the token's signature must be checked
        (that may fetch its issuer's keys: call :meth:`authenticate` from a thread then).

        Refusals it can decide (credentials missing or malformed, a cached token expired)
        raise :class:`AuthError` as :meth:`authenticate` does. It does CPU work only (a lock is
        held for a dictionary lookup), so it may run on the event loop.
        """
        if self.mode == "api_key":
            return self._authenticate_key(_header(headers, API_KEY_HEADER))
        token = self._bearer(headers)
        digest = self._digest(token)
        claims = self._cached_claims(digest)
        return None if claims is None else self._principal(digest, claims, single_use=False)

    def _bearer(self, headers: Mapping[str, str]) -> str:
        value = _header(headers, "Authorization")
        if not value:
            raise self._refuse("missing", "missing bearer token", error=None)
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise self._refuse("malformed", "authorization header is not a bearer token",
                               error="invalid_request")  # fmt: skip
        return token

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The loaded key named ``key_id`` (None: not among the keys loaded at start-up); the
        dashboard re-checks its API-key sessions with it on every page."""
        return next((r for r in self._api_keys if r.key_id == key_id), None)

    def _authenticate_key(self, presented: str | None) -> Principal:
        if not presented:
            raise self._refuse("missing", "missing API key", error=None)
        record = verify_api_key(presented.strip(), self._api_keys)
        if record is None:
            raise self._refuse("unknown_key", "API key is not valid")
        subject = f"apikey:{record.key_id}"
        # load_api_keys refuses such entries; checked again as for tokens, before any action.
        if not (is_audit_text(subject) and is_audit_text(record.clinic)):
            raise self._refuse("key_shape", "API key is not valid")
        return Principal(
            subject=subject,
            clinic=record.clinic,
            scopes=record.scopes,
            token_id=record.key_id,
            method="api_key",
        )

    def _digest(self, token: str) -> bytes:
        if len(token) > MAX_TOKEN_CHARS:
            raise self._refuse("too_long", "token is too long")
        return hashlib.sha256(token.encode()).digest()

    def _cached_claims(self, digest: bytes) -> dict[str, Any] | None:
        """The verified-token cache's claims of the token, None if not cached."""
        claims, expired = self.verified.get(digest)
        if expired:
            raise self._refuse("expired", "token has expired")
        return claims

    def _verify_jwt(self, token: str, *, single_use: bool, audience: str | None) -> Principal:
        digest = self._digest(token)
        if audience is not None:  # checked against this endpoint, never a cached verdict
            checked = self._verify_signature_and_claims(token, audience=audience)
            return self._principal(digest, checked, single_use=True, cds=True)
        claims = self._cached_claims(digest)
        if claims is None:
            claims = self._verify_signature_and_claims(token)
            self.verified.put(digest, claims)
        return self._principal(digest, claims, single_use=single_use)

    def _verify_signature_and_claims(self, token: str, *, audience: str | None = None
                                     ) -> dict[str, Any]:  # fmt: skip
        try:
            header, payload = _peek(token)
        # binascii.Error and JSONDecodeError are ValueErrors; deep nesting is a RecursionError.
        except (ValueError, TypeError, RecursionError):
            raise self._refuse("malformed", "token is not a well-formed JWT") from None
        alg, kid, iss = header.get("alg"), header.get("kid"), payload.get("iss")
        if alg not in ALGORITHMS:
            raise self._refuse("algorithm", "token algorithm is not accepted")
        typ = header.get("typ")
        # CDS Hooks 2.0 "Trusting CDS Clients": the JWT header's typ is REQUIRED, fixed "JWT".
        if audience is not None and not (isinstance(typ, str) and typ.upper() == "JWT"):
            raise self._refuse("typ", "token header 'typ' must be JWT")
        if not isinstance(kid, str) or not kid:
            raise self._refuse("no_kid", "token has no key id")
        source = self._sources.get(iss) if isinstance(iss, str) else None
        if source is None:
            raise self._refuse("issuer", "token issuer is not accepted")
        try:
            key = source.get(kid)
        except JwksUnavailable:
            raise AuthError(503, "the token issuer's signing keys are unavailable") from None
        if key is None:
            raise self._refuse("unknown_kid", "token signing key is not known")
        if alg not in key.algorithms:
            raise self._refuse("algorithm", "token algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                # From the key's own type, never from the token's header (RFC 8725 2.1).
                algorithms=list(key.algorithms),
                audience=audience or source.config.audience,
                issuer=source.config.issuer,
                leeway=self.settings.leeway_s,
                options={
                    "require": list(CDS_HOOKS_CLAIMS if audience else REQUIRED_CLAIMS),
                    "strict_aud": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise self._refuse(
                "missing_claim", f"token lacks the required '{exc.claim}' claim"
            ) from None
        except jwt.PyJWTError as exc:
            for kind, reason, detail in _JWT_FAILURES:
                if isinstance(exc, kind):
                    raise self._refuse(reason, detail) from None
            raise self._refuse("invalid", "token is invalid") from None
        # RFC 7519 2: NumericDate is a JSON number; PyJWT would also take "1700000000".
        times = [claims[name] for name in ("exp", "nbf", "iat") if name in claims]
        if any(type(value) not in (int, float) for value in times):
            raise self._refuse("invalid", "token time claims must be numbers")
        # Each used jti is kept until exp (fail closed when full): a long-lived single-use
        # token would hold its place long after the call it was minted for.
        lifetime = self.settings.cds_max_token_lifetime_s
        if audience is not None and claims["exp"] - claims["iat"] > lifetime:
            raise self._refuse("lifetime", f"token lifetime (exp - iat) exceeds {lifetime:g} s")
        return claims

    def _principal(self, digest: bytes, claims: dict[str, Any], *, single_use: bool,
                   cds: bool = False) -> Principal:  # fmt: skip
        claim = self.settings.clinic_claim
        clinic, sub, jti = claims.get(claim), claims.get("sub"), claims.get("jti")
        bound = self._sources[claims["iss"]].config.clinic
        if cds and bound is None and self.mode != "dev":
            # CDS Hooks: only an issuer registered as an EHR (with its clinic) may call; an
            # identity provider's tokens name clinics themselves and are for /v1 only.
            raise self._refuse("not_ehr", "token issuer is not registered for CDS Hooks calls")
        if bound is not None:  # the issuer's configuration names its clinic (an EHR)
            if clinic is not None and clinic != bound:
                raise self._refuse("claim_shape", f"token '{claim}' claim is not accepted")
            clinic = bound
        if sub is None and single_use:  # CDS Hooks tokens need no sub: the issuer acts
            sub = claims["iss"]
        if not isinstance(clinic, str) or not clinic.strip():
            raise self._refuse("missing_claim", f"token lacks the required '{claim}' claim")
        if not isinstance(sub, str) or not sub.strip():
            raise self._refuse("missing_claim", "token lacks the required 'sub' claim")
        # Who may act is who can be written to the audit trail (one rule, the record's own): a
        # claim it would refuse is refused here, before any action runs (RFC 6750 invalid_token).
        if not is_audit_text(clinic):
            raise self._refuse("claim_shape", f"token '{claim}' claim is not accepted "
                               f"(at most {MAX_TEXT} characters, no control characters)")  # fmt: skip
        if not is_audit_text(sub):
            raise self._refuse("claim_shape", "token 'sub' claim is not accepted "
                               f"(at most {MAX_TEXT} characters, no control characters)")  # fmt: skip
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise self._refuse("invalid", "token 'jti' claim is invalid")
        if single_use:
            if jti is None:
                raise self._refuse("missing_claim", "token lacks the required 'jti' claim")
            key = f"{claims['iss']}\x00{jti}"
            if self.replay_cache.seen(key, float(claims["exp"]) + self.settings.leeway_s):
                raise self._refuse("replay", "token has already been used")
        token_id = jti or "sha256:" + digest.hex()[:16]
        return Principal(
            subject=sub,
            clinic=clinic,
            scopes=_scopes_of(claims),
            token_id=token_id,
            method="dev" if self.mode == "dev" else "jwt",
            issuer=claims["iss"],
        )
