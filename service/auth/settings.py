"""Authentication settings: ``AuthSettings`` (environment prefix ``ALLIANCE_RISK_AUTH_``), one
``IssuerConfig`` per trusted token issuer, the guard that refuses dev mode in a named
deployment, and ``describe`` for the start-up log line.

Validation fails fast: no mode means no start (auth is never off by omission), a JWKS URL must
be https (http only to a loopback address), and dev mode is refused when
``ALLIANCE_RISK_DEPLOYMENT`` names a deployment. Nothing here does I/O beyond reading the
environment.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.store import project_root
from service.auth.principal import API_KEY_HEADER

#: Asymmetric JWS algorithms only (RFC 8725 section 3.1: never let the token pick HMAC).
ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
#: Environment variable naming the deployment; dev mode is refused unless it is unset or local.
DEPLOYMENT_ENV = "ALLIANCE_RISK_DEPLOYMENT"
_DEV_DEPLOYMENTS = frozenset({"", "local"})

AuthMode = Literal["jwt", "api_key", "dev"]


class DevModeRefused(RuntimeError):
    """Dev auth mode was asked for in a named deployment (for example docker compose)."""


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
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
    clinic: str | None = Field(
        None,
        description="The clinic this issuer acts for (an EHR calling the CDS Hooks services: "
        "its tokens carry no clinic claim). When set, a token's clinic claim, if any, must "
        "name the same clinic. Required for CDS Hooks calls (outside dev mode): an issuer "
        "without it is refused there.",
    )
    organizations: dict[str, str] = Field(
        default_factory=dict,
        description="Optional, CDS Hooks: the EHR's Organization ids (the 8731 of "
        "Patient.managingOrganization 'Organization/8731') -> this service's clinic. When "
        "set, a hook's patient whose organization is not listed for the issuer's clinic is "
        "answered as a missing one (404); when empty, the issuer's clinic is the patient's.",
    )
    fhir_servers: list[str] = Field(
        default_factory=list,
        description="FHIR base URLs this issuer's CDS Hooks calls may name as fhirServer; the "
        "service fetches missing prefetch only from these (https, or http to loopback).",
    )

    @field_validator("fhir_servers")
    @classmethod
    def _fhir_servers_are_safe(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            secure = parts.scheme == "https" or (
                parts.scheme == "http" and is_loopback(parts.hostname)
            )
            if not secure or parts.query or parts.fragment or parts.username:
                raise ValueError(
                    "fhir_servers must be https base URLs (http only to a loopback address), "
                    "without query, fragment or user info"
                )
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file and jwks_url for each issuer")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            # Plain http would let anyone on the path substitute keys; loopback is for tests
            # and sidecars only.
            if not (
                parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))
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
    cds_max_token_lifetime_s: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="Longest lifetime (exp - iat) of a CDS Hooks client's JWT. Each used jti "
        "is remembered until its token expires, so a longer-lived token would fill the "
        "replay cache (full = every new token refused).",
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
