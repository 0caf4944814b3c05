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
``jwks_cache_s`` and never past ``exp``), so a client reusing its token costs ~10 us per request
instead of a signature check (~0.2-0.3 ms).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.store import project_root

logger = logging.getLogger(__name__)

# -- constants ----------------------------------------------------------------------------------

RISK_READ = "risk:read"  # score one client
RISK_BATCH = "risk:batch"  # score many clients in one request
MODEL_READ = "model:read"  # model card and version
MODEL_ADMIN = "model:admin"  # reload the model
#: Every scope the service checks.
SCOPES = frozenset({RISK_READ, RISK_BATCH, MODEL_READ, MODEL_ADMIN})
#: SMART on FHIR v1 (``.read``) and v2 (``.rs`` = read + search) system scopes on the resource
#: this service produces, accepted as ``risk:read`` (SMART App Launch 2.x, "Scopes and Launch
#: Context").
SMART_ALIASES = {
    "system/RiskAssessment.read": RISK_READ,
    "system/RiskAssessment.rs": RISK_READ,
}
#: Asymmetric JWS algorithms only (RFC 8725 section 3.1: never let the token pick HMAC).
ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
#: Issuer and audience of the tokens dev mode mints and accepts.
DEV_ISSUER = "urn:alliance-risk:dev"
DEV_AUDIENCE = "alliance-risk"
DEV_PRIVATE_KEY_FILE = "dev-signing-key.pem"
DEV_JWKS_FILE = "jwks.json"
#: Environment variable naming the deployment; dev mode is refused unless it is unset or local.
DEPLOYMENT_ENV = "ALLIANCE_RISK_DEPLOYMENT"
_DEV_DEPLOYMENTS = frozenset({"", "local"})
API_KEY_HEADER = "X-API-Key"
#: 32 characters of ``secrets.token_urlsafe`` carry 192 bits; shorter keys are refused.
API_KEY_MIN_CHARS = 32
_API_KEY_MAX_CHARS = 512
_API_KEY_HASH_PREFIX = "sha256:"
REALM = "alliance-risk"
#: A bearer token longer than this is refused before any parsing (cheap DoS guard).
MAX_TOKEN_CHARS = 8192
#: Claims every JWT must carry (the clinic claim is checked separately, by its configured name).
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat")
_MAX_JWKS_BYTES = 1 << 20
_MIN_RSA_BITS = 2048
#: Curve -> the one algorithm a key on it may sign with.
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384"}
_MAX_DEV_TTL_S = 24 * 3600

AuthMode = Literal["jwt", "api_key", "dev"]
Method = Literal["jwt", "api_key", "dev"]


# -- errors and the principal -------------------------------------------------------------------


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


class DevModeRefused(RuntimeError):
    """Dev auth mode was asked for in a named deployment (for example docker compose)."""


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
    """

    subject: str
    clinic: str
    scopes: frozenset[str]
    token_id: str
    method: Method

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def normalise_scopes(raw: Iterable[str]) -> frozenset[str]:
    """Known scopes in ``raw``, SMART aliases mapped to ``risk:read``; anything else dropped."""
    out = set()
    for scope in raw:
        if scope in SCOPES:
            out.add(scope)
        elif scope in SMART_ALIASES:
            out.add(SMART_ALIASES[scope])
    return frozenset(out)


def _check_scope_names(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes, each checked to be known (configuration and minting refuse typos)."""
    names = list(scopes)
    unknown = sorted(s for s in names if s not in SCOPES and s not in SMART_ALIASES)
    if unknown:
        known = sorted(SCOPES | set(SMART_ALIASES))
        raise ValueError(f"unknown scope(s) {unknown}; known: {known}")
    return normalise_scopes(names)


def _challenge(method: Method, error: str | None = None, description: str | None = None,
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
        raise AuthError(
            403, detail, _challenge(principal.method, "insufficient_scope", scope=scope)
        )


# -- settings -----------------------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IssuerConfig(BaseModel):
    """One trusted token issuer: its ``iss`` value, the audience its tokens must name for this
    service, and where its public keys are (exactly one of ``jwks_file`` and ``jwks_url``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1, description="Exact `iss` value of the issuer's tokens.")
    audience: str = Field(min_length=1, description="Required `aud` value (this service).")
    jwks_file: Path | None = Field(None, description="Local JWKS document (JSON).")
    jwks_url: str | None = Field(
        None,
        description="JWKS URL; https, or http only to a loopback address. Fetched with a short "
        "timeout, no redirects, cached for jwks_cache_s.",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file and jwks_url for each issuer")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            # Plain http would let anyone on the path substitute keys; loopback is for tests
            # and sidecars only.
            if not (
                parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))
            ):
                raise ValueError("jwks_url must be https (http only to a loopback address)")
        return self


def default_dev_key_dir() -> Path:
    """``<project root>/.alliance-risk/dev-keys``."""
    return project_root() / ".alliance-risk" / "dev-keys"


def check_dev_mode_allowed() -> None:
    """Raise ``DevModeRefused`` when ``ALLIANCE_RISK_DEPLOYMENT`` names a real deployment."""
    deployment = os.environ.get(DEPLOYMENT_ENV, "").strip().lower()
    if deployment not in _DEV_DEPLOYMENTS:
        raise DevModeRefused(
            f"auth mode 'dev' is refused because {DEPLOYMENT_ENV}={deployment}: dev tokens are "
            "minted from a local key anyone on this machine can read. Configure "
            "ALLIANCE_RISK_AUTH_MODE=jwt (with ALLIANCE_RISK_AUTH_ISSUERS) or api_key "
            "(with ALLIANCE_RISK_AUTH_API_KEYS_FILE)."
        )


class AuthSettings(BaseSettings):
    """Authentication options, environment prefix ``ALLIANCE_RISK_AUTH_``.

    ``mode`` has no default: a deployment that forgets it fails at start-up instead of serving
    without auth. ``issuers`` is a JSON list in ``ALLIANCE_RISK_AUTH_ISSUERS``, for example
    ``[{"issuer": "https://idp.example", "audience": "alliance-risk",
    "jwks_url": "https://idp.example/.well-known/jwks.json"}]``.
    """

    model_config = SettingsConfigDict(env_prefix="ALLIANCE_RISK_AUTH_", extra="ignore")

    mode: AuthMode = Field(description="jwt, api_key or dev. Required: auth is never off.")
    issuers: list[IssuerConfig] = Field(
        default_factory=list, description="Trusted issuers (mode jwt)."
    )
    api_keys_file: Path | None = Field(
        None, description="JSON file of hashed API keys (mode api_key); see load_api_keys."
    )
    dev_key_dir: Path = Field(
        default_factory=default_dev_key_dir,
        description="Where dev mode keeps its key pair (private key mode 0600).",
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat.")
    jwks_cache_s: float = Field(300.0, gt=0, description="Seconds a fetched JWKS is trusted.")
    jwks_timeout_s: float = Field(3.0, gt=0, le=30, description="Timeout of one JWKS fetch.")
    jwks_refetch_cooldown_s: float = Field(
        10.0,
        ge=0,
        description="Minimum seconds between early refetches caused by an unknown kid, so "
        "tokens with made-up kids cannot make the service hammer the issuer.",
    )
    clinic_claim: str = Field("clinic", min_length=1, description="Claim holding the clinic.")
    replay_cache_size: int = Field(
        100_000, ge=1, description="Single-use jti values remembered at most (bounded memory)."
    )
    verified_cache_size: int = Field(
        10_000,
        ge=0,
        description="Verified tokens remembered (by hash) to skip re-verifying a reused bearer "
        "token; 0 verifies every request.",
    )

    @field_validator("issuers")
    @classmethod
    def _unique_issuers(cls, value: list[IssuerConfig]) -> list[IssuerConfig]:
        names = [i.issuer for i in value]
        if len(names) != len(set(names)):
            raise ValueError("each issuer may be configured once")
        return value

    @model_validator(mode="after")
    def _mode_is_usable(self) -> AuthSettings:
        if self.mode == "jwt" and not self.issuers:
            raise ValueError("mode 'jwt' needs at least one issuer (ALLIANCE_RISK_AUTH_ISSUERS)")
        if self.mode == "api_key" and self.api_keys_file is None:
            raise ValueError("mode 'api_key' needs ALLIANCE_RISK_AUTH_API_KEYS_FILE")
        if self.mode == "dev":
            check_dev_mode_allowed()
        return self


def _redact_url(url: str) -> str:
    """The URL without userinfo, query or fragment (those can hold secrets)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe(settings: AuthSettings) -> str:
    """One line for the start-up log: the mode and where keys come from, no secrets."""
    if settings.mode == "dev":
        return (
            f"auth mode=dev: accepting tokens signed by the local dev key in "
            f"{settings.dev_key_dir} (alliance-risk token mints them); NOT for production"
        )
    if settings.mode == "api_key":
        return (
            f"auth mode=api_key: hashed keys from {settings.api_keys_file}, header {API_KEY_HEADER}"
        )
    sources = []
    for cfg in settings.issuers:
        where = (
            f"file {cfg.jwks_file}" if cfg.jwks_file else f"url {_redact_url(cfg.jwks_url or '')}"
        )
        sources.append(f"{cfg.issuer} (aud {cfg.audience}, JWKS {where})")
    return (
        f"auth mode=jwt: issuers {'; '.join(sources)}; algorithms {', '.join(ALGORITHMS)}; "
        f"clinic claim '{settings.clinic_claim}'"
    )


# -- JWKS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VerificationKey:
    key: Any  # a cryptography public key object
    algorithms: tuple[str, ...]


def keys_from_jwks(doc: Any) -> dict[str, _VerificationKey]:
    """The usable signing keys of a JWKS document, by ``kid``.

    Skipped: keys without a ``kid`` (a token cannot select them), symmetric (``oct``) keys, keys
    for encryption (``use`` other than ``sig``), curves other than P-256/P-384, RSA keys under
    2048 bits, and keys whose ``alg`` is not one of ``ALGORITHMS``.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    out: dict[str, _VerificationKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        if kty == "RSA":
            allowed: tuple[str, ...] = ("RS256", "RS384")
        elif kty == "EC" and jwk.get("crv") in _EC_ALGORITHMS:
            allowed = (_EC_ALGORITHMS[jwk["crv"]],)
        else:
            continue
        if alg is not None:
            if alg not in allowed:
                continue
            allowed = (alg,)
        try:
            key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            # A JWKS should never hold private parts; use the public half and say so.
            logger.warning("JWKS holds private key material", extra={"fields": {"kid": kid}})
            key = key.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            continue
        out[kid] = _VerificationKey(key, allowed)
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could move a JWKS fetch from https to somewhere else; refuse all."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class JwksUnavailable(Exception):
    """An issuer's keys could not be loaded and none are cached."""


class JwksSource:
    """One issuer's keys, from a file or a URL, cached for ``cache_s`` seconds.

    Thread-safe. An unknown ``kid`` triggers one early reload (key rotation), at most once per
    ``cooldown_s``. When a reload fails, the previous keys stay in use (an issuer outage must
    not lock every client out) and the failure is logged.
    """

    def __init__(self, config: IssuerConfig, *, cache_s: float = 300.0, timeout_s: float = 3.0,
                 cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.config = config
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _VerificationKey] | None = None
        self._loaded_at = -float("inf")
        self._attempted_at = -float("inf")
        #: Completed loads (file reads or fetches), for tests and metrics.
        self.loads = 0

    def _read(self) -> Any:
        if self.config.jwks_file is not None:
            return json.loads(self.config.jwks_file.read_text(encoding="utf-8"))
        url = self.config.jwks_url or ""
        handlers: list[Any] = [_NoRedirect()]
        if _is_loopback(urlsplit(url).hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with opener.open(request, timeout=self.timeout_s) as response:
            body = response.read(_MAX_JWKS_BYTES + 1)
        if len(body) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS document is too large")
        return json.loads(body)

    def _reload(self) -> bool:
        """Load the keys; on failure keep the old ones (caller holds the lock)."""
        self._attempted_at = self._clock()
        try:
            keys = keys_from_jwks(self._read())
        except Exception as exc:  # any I/O, HTTP or parse failure: keep serving cached keys
            logger.warning(
                "JWKS load failed",
                extra={"fields": {"issuer": self.config.issuer, "error": type(exc).__name__}},
            )
            return False
        self._keys = keys
        self._loaded_at = self._attempted_at
        self.loads += 1
        return True

    def get(self, kid: str) -> _VerificationKey | None:
        """The key with ``kid``, or None. Raises ``JwksUnavailable`` if nothing could be loaded.

        Reloads are throttled to one per ``cooldown_s``, failed ones included, so an issuer
        outage costs at most one timeout per cooldown rather than one per request.
        """
        with self._lock:
            expired = self._keys is None or self._clock() - self._loaded_at >= self.cache_s
            may_reload = self._clock() - self._attempted_at >= self.cooldown_s
            if expired and may_reload:
                self._reload()
                may_reload = False  # just loaded: an unknown kid is unknown to the issuer too
            if self._keys is None:
                raise JwksUnavailable(self.config.issuer)
            key = self._keys.get(kid)
            if key is None and may_reload:
                self._reload()
                key = self._keys.get(kid)
            return key

    def warm(self) -> bool:
        """Load the keys now (start-up); True when keys are available."""
        with self._lock:
            self._reload()
            return self._keys is not None


# -- replay cache -------------------------------------------------------------------------------


class JtiReplayCache:
    """Remembers single-use token ids until their expiry, in bounded memory.

    Thread-safe. ``seen(jti, exp)`` returns True when ``jti`` was presented before and has not
    expired, else remembers it and returns False. Callers pass ``exp`` plus the clock leeway
    they accept, since a token stays usable that long.

    When ``max_entries`` live ids are held, new ids are treated as replays (fail closed):
    forgetting a live id would let that token be replayed. Size it above the single-use token
    rate times the token lifetime (for CDS Hooks: 5-minute tokens).
    """

    def __init__(self, max_entries: int = 100_000, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            exp, jti = heapq.heappop(self._heap)
            if self._expiry.get(jti) == exp:
                del self._expiry[jti]

    def seen(self, jti: str, exp: float) -> bool:
        """True if ``jti`` is a replay (or the cache is full); otherwise remember it until ``exp``
        (seconds since the epoch)."""
        now = self._clock()
        with self._lock:
            self._purge(now)
            if jti in self._expiry:
                return True
            if exp <= now:
                return False  # already expired: the token check refuses it, nothing to remember
            if len(self._expiry) >= self.max_entries:
                logger.warning("jti replay cache full; refusing single-use token")
                return True
            self._expiry[jti] = exp
            heapq.heappush(self._heap, (exp, jti))
            return False

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._expiry)


# -- API keys -----------------------------------------------------------------------------------


def generate_api_key() -> str:
    """A new API key: ``ark_`` and 43 URL-safe characters (32 random bytes, 256 bits)."""
    return "ark_" + secrets.token_urlsafe(32)


def _sha256(key: str) -> str:
    return _API_KEY_HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def hash_api_key(key: str) -> str:
    """``sha256:<hex>`` of ``key``, the only form in which keys are stored.

    A fast hash is enough because keys are random, not chosen by people: slow hashes (bcrypt,
    argon2) exist to slow offline guessing of low-entropy passwords, but guessing one of 2**192
    or more equally likely keys is out of reach at any hash rate, and a slow hash would cost
    ~100 ms of CPU on every request (a denial-of-service lever). Hence the minimum length of
    ``API_KEY_MIN_CHARS`` characters; use ``generate_api_key``.
    """
    if len(key) < API_KEY_MIN_CHARS:
        raise ValueError(
            f"API keys must be at least {API_KEY_MIN_CHARS} characters of random data; "
            "use generate_api_key()"
        )
    return _sha256(key)


@dataclass(frozen=True)
class ApiKeyRecord:
    """One stored key: its public id, its hash, the clinic and scopes it grants."""

    key_id: str
    key_hash: str
    clinic: str
    scopes: frozenset[str]


class _ApiKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    clinic: str = Field(min_length=1)
    scopes: list[str] = Field(min_length=1)


class _ApiKeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_ApiKeyEntry]


def load_api_keys(path: Path) -> tuple[ApiKeyRecord, ...]:
    """Read the hashed key file.

    Format::

        {"keys": [{"id": "frontdesk-1", "hash": "sha256:<64 hex>", "clinic": "north",
                   "scopes": ["risk:read", "risk:batch"]}]}

    Raises ``ValueError`` naming the entry and field of any problem (never a hash value), for
    unknown scopes, and for repeated ids or hashes.
    """
    try:
        parsed = _ApiKeyFile.model_validate_json(Path(path).read_bytes())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in exc.errors()
        )
        raise ValueError(f"API key file {path} is invalid: {problems}") from None
    records = []
    for i, entry in enumerate(parsed.keys):
        try:
            scopes = _check_scope_names(entry.scopes)
        except ValueError as exc:
            raise ValueError(f"API key file {path}: keys.{i}.scopes: {exc}") from None
        records.append(ApiKeyRecord(entry.id, entry.hash, entry.clinic, scopes))
    for attr, label in (("key_id", "id"), ("key_hash", "hash")):
        values = [getattr(r, attr) for r in records]
        if len(values) != len(set(values)):
            raise ValueError(f"API key file {path}: every key needs a distinct {label}")
    return tuple(records)


def verify_api_key(presented: str, records: Iterable[ApiKeyRecord]) -> ApiKeyRecord | None:
    """The record whose hash matches ``presented``, or None.

    Every record is compared with ``hmac.compare_digest`` and the loop never stops early, so
    the time taken does not depend on which key (if any) matched.
    """
    if not presented or len(presented) > _API_KEY_MAX_CHARS:
        return None
    digest = _sha256(presented)
    match = None
    for record in records:
        if hmac.compare_digest(digest, record.key_hash):
            match = record
    return match


# -- dev mode -----------------------------------------------------------------------------------


def _jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC public JWK (the dev key's ``kid``)."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64url_encode(hashlib.sha256(canonical).digest()).decode()


def _write_new_private_key(path: Path) -> None:
    """Create ``path`` (mode 0600) with a new P-256 key, unless another process just did."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask could only narrow it, but be explicit
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the target exists: with two workers starting at once, the first key
        # wins and both use it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_dev_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(
            f"dev private key {path} is readable by other users (mode {mode & 0o777:o}); "
            "run chmod 600 on it"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"dev private key {path} is not a P-256 EC key")
    return key


def _dev_jwks(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=_jwk_thumbprint(jwk), alg="ES256", use="sig")
    return {"keys": [jwk]}


def ensure_dev_keys(key_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Create the dev ES256 key pair in ``key_dir`` once; return (private key path, JWKS).

    The private key is ``dev-signing-key.pem`` (mode 0600, in a 0700 directory); the public
    JWKS is also written to ``jwks.json`` next to it. Later calls reuse the key. Raises
    ``DevModeRefused`` in a named deployment and ``PermissionError`` if the key file has become
    readable by others.
    """
    check_dev_mode_allowed()
    key_dir = Path(key_dir) if key_dir is not None else default_dev_key_dir()
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = key_dir / DEV_PRIVATE_KEY_FILE
    if not private.exists():
        _write_new_private_key(private)
        logger.info("dev signing key created", extra={"fields": {"dir": str(key_dir)}})
    jwks = _dev_jwks(_load_dev_private_key(private))
    text = json.dumps(jwks, indent=2) + "\n"
    public = key_dir / DEV_JWKS_FILE
    if not public.exists() or public.read_text(encoding="utf-8") != text:
        tmp = public.with_name(f".{public.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, public)
    return private, jwks


def mint_dev_token(clinic: str, scopes: Iterable[str], ttl_s: int = 3600, sub: str = "dev-user",
                   *, key_dir: Path | None = None, clinic_claim: str = "clinic") -> str:  # fmt: skip
    """A dev-mode bearer token (ES256, issuer ``DEV_ISSUER``, audience ``DEV_AUDIENCE``).

    Parameters
    ----------
    clinic
        Value of the clinic claim (the tenant the token can read).
    scopes
        Scope names (``SCOPES`` or SMART aliases); at least one.
    ttl_s
        Lifetime in seconds, 1 to 86400.
    sub
        The ``sub`` claim.
    key_dir
        Dev key directory (default: ``<project root>/.alliance-risk/dev-keys``); keys are
        created if absent.
    clinic_claim
        Claim name for the clinic (``AuthSettings.clinic_claim``).
    """
    if not clinic.strip():
        raise ValueError("clinic must not be empty")
    if not sub.strip():
        raise ValueError("sub must not be empty")
    names = list(scopes)
    if not names:
        raise ValueError("give at least one scope")
    _check_scope_names(names)
    if not 1 <= ttl_s <= _MAX_DEV_TTL_S:
        raise ValueError(f"ttl_s must be between 1 and {_MAX_DEV_TTL_S} seconds")
    private, jwks = ensure_dev_keys(key_dir)
    key = _load_dev_private_key(private)
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": sub,
        clinic_claim: clinic,
        "scope": " ".join(dict.fromkeys(names)),
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwks["keys"][0]["kid"]})


class VerifiedTokenCache:
    """Claims of recently verified tokens, by SHA-256 of the token, so a client reusing its
    bearer token does not pay signature verification on every request (~0.3-0.6 ms each).

    Thread-safe, at most ``max_entries`` (oldest dropped first). An entry is trusted for
    ``ttl_s`` seconds (the JWKS cache time: a token stays accepted as long as the keys that
    verified it are) and never past the token's ``exp`` plus ``leeway_s``.
    """

    def __init__(self, max_entries: int, ttl_s: float, leeway_s: float, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.max_entries, self.ttl_s, self.leeway_s = max_entries, ttl_s, leeway_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()

    def get(self, digest: bytes) -> tuple[dict[str, Any] | None, bool]:
        """(claims, expired): the cached claims, or None; ``expired`` when the token was cached
        but its ``exp`` (plus leeway) has passed."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None, False
            cached_at, claims = entry
            if now - cached_at >= self.ttl_s or claims["exp"] <= now - self.leeway_s:
                del self._entries[digest]
                return None, claims["exp"] <= now - self.leeway_s
            return claims, False

    def put(self, digest: bytes, claims: dict[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[digest] = (self._clock(), claims)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT before verification, only to pick the issuer and key.

    Lenient on purpose and cheap (PyJWT's strict segment check costs ~0.1 ms per segment); the
    strict parse and every check happen in ``jwt.decode`` right after.
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


# -- the authenticator --------------------------------------------------------------------------


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

    Built once per app (thread-safe). The constructor reads the API key file (mode api_key) or
    creates/loads the dev key pair (mode dev); JWKS are loaded lazily or by ``warm()``. A JWKS
    URL fetch can block for up to ``jwks_timeout_s``, so call ``authenticate`` from the thread
    pool (or ``warm()`` at start-up so requests normally hit the cache).
    """

    def __init__(self, settings: AuthSettings, *, replay_cache: JtiReplayCache | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.settings = settings
        self.mode: AuthMode = settings.mode
        self.replay_cache = replay_cache or JtiReplayCache(settings.replay_cache_size)
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
        return AuthError(401, detail, _challenge(self.mode, error, description))

    def authenticate(self, headers: Mapping[str, str], *, single_use: bool = False) -> Principal:
        """The caller's ``Principal``, or ``AuthError`` (401; 503 if keys are unreachable).

        Parameters
        ----------
        headers
            Request headers (case-insensitive names): ``Authorization: Bearer <jwt>`` in modes
            jwt and dev, ``X-API-Key`` in mode api_key.
        single_use
            Require a ``jti`` and refuse a token presented before (CDS Hooks); JWT modes only.
        """
        if self.mode == "api_key":
            return self._authenticate_key(_header(headers, API_KEY_HEADER))
        value = _header(headers, "Authorization")
        if not value:
            raise self._refuse("missing", "missing bearer token", error=None)
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise self._refuse("malformed", "authorization header is not a bearer token",
                               error="invalid_request")  # fmt: skip
        return self._verify_jwt(token, single_use=single_use)

    def _authenticate_key(self, presented: str | None) -> Principal:
        if not presented:
            raise self._refuse("missing", "missing API key", error=None)
        record = verify_api_key(presented.strip(), self._api_keys)
        if record is None:
            raise self._refuse("unknown_key", "API key is not valid")
        return Principal(
            subject=f"apikey:{record.key_id}",
            clinic=record.clinic,
            scopes=record.scopes,
            token_id=record.key_id,
            method="api_key",
        )

    def _verify_jwt(self, token: str, *, single_use: bool) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise self._refuse("too_long", "token is too long")
        digest = hashlib.sha256(token.encode()).digest()
        claims, expired = self.verified.get(digest)
        if expired:
            raise self._refuse("expired", "token has expired")
        if claims is None:
            claims = self._verify_signature_and_claims(token)
            self.verified.put(digest, claims)
        return self._principal(digest, claims, single_use=single_use)

    def _verify_signature_and_claims(self, token: str) -> dict[str, Any]:
        try:
            header, payload = _peek(token)
        # binascii.Error and JSONDecodeError are ValueErrors; deep nesting is a RecursionError.
        except (ValueError, TypeError, RecursionError):
            raise self._refuse("malformed", "token is not a well-formed JWT") from None
        alg, kid, iss = header.get("alg"), header.get("kid"), payload.get("iss")
        if alg not in ALGORITHMS:
            raise self._refuse("algorithm", "token algorithm is not accepted")
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
                audience=source.config.audience,
                issuer=source.config.issuer,
                leeway=self.settings.leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
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
        if any(type(claims[name]) not in (int, float) for name in ("exp", "nbf", "iat")):
            raise self._refuse("invalid", "token time claims must be numbers")
        return claims

    def _principal(self, digest: bytes, claims: dict[str, Any], *, single_use: bool) -> Principal:
        claim = self.settings.clinic_claim
        clinic, sub, jti = claims.get(claim), claims.get("sub"), claims.get("jti")
        if not isinstance(clinic, str) or not clinic.strip():
            raise self._refuse("missing_claim", f"token lacks the required '{claim}' claim")
        if not isinstance(sub, str) or not sub.strip():
            raise self._refuse("missing_claim", "token lacks the required 'sub' claim")
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
        )
