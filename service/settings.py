"""Settings of the scoring service: one pydantic-settings object, environment prefix
``ALLIANCE_RISK_`` (for example ``ALLIANCE_RISK_MODEL_URI``). Nothing happens at import time."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.drift import MIN_CLIENTS

DEFAULT_MODEL_URI = "models:/alliance-risk@champion"
#: The service's data folder under the project root (the audit file's default folder too).
DATA_DIRNAME = ".alliance-risk"


def _data_dir() -> Path:
    from models.store import project_root

    return project_root() / DATA_DIRNAME


class ServiceSettings(BaseSettings):
    """Every option of ``alliance-risk serve`` and the app, with its default.

    The MLflow tracking store is taken from ``MLFLOW_TRACKING_URI`` (or ``tracking_uri``), and
    defaults to the project's embedded SQLite store, as for the analysts' commands.
    """

    model_config = SettingsConfigDict(env_prefix="ALLIANCE_RISK_", extra="ignore")

    model_uri: str = Field(
        DEFAULT_MODEL_URI,
        description="Model to serve. A models:/<name>@<alias> URI is watched: when the alias "
        "moves, the new version is loaded, checked and swapped in.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking/registry URI. Default: MLFLOW_TRACKING_URI, else the "
        "embedded SQLite store in .mlflow/.",
    )
    poll_interval_s: float = Field(
        30.0, ge=0, description="Seconds between checks of the alias; 0 turns polling off."
    )
    registry_timeout_s: float = Field(
        5.0, gt=0, description="HTTP timeout for each call to a remote registry."
    )
    max_batch: int = Field(1000, ge=1, le=10_000, description="Clients per batch request.")
    max_sessions: int = Field(
        500, ge=1, le=10_000, description="Appointments per client in one request."
    )
    route_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads per worker that run the routes' work (scoring, authentication). "
        "One worker computes on one core at a time (Python's GIL); more threads only contend "
        "for it, and served fewer requests/s in bench_service than one. Use --workers for more "
        "cores. Model reloads have a thread of their own.",
    )
    header_timeout_s: float = Field(
        10.0,
        ge=0,
        description="Seconds a client has to send a request's headers, counted from the "
        "connection (or from the first byte of a next request on a kept-alive one); the "
        "connection is closed after that. Stops idle and slowloris connections; 0 turns it off.",
    )
    body_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Seconds a client has to send a request's body once its headers are in, "
        "whether the app reads it or not; the connection is closed after that. 0 turns it off.",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line plus headers in bytes; above it the client gets 431 "
        "and the connection is closed.",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="Seconds an idle connection is kept open between requests."
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="Open connections per worker; above it new requests are answered 503 "
        "(uvicorn's limit_concurrency).",
    )
    backlog: int = Field(
        2048, ge=1, description="Connections the kernel queues before the server accepts them."
    )
    docs_enabled: bool = Field(True, description="Serve /docs, /redoc and /openapi.json.")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry tracing, metrics and logs, exported through "
        "the globally configured OpenTelemetry providers. Off by default: the service exports "
        "Prometheus metrics at /metrics, and FastAPI checks the providers on every request "
        "even when none is configured (~20 us per request under cProfile).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drift_enabled: bool = Field(
        True,
        description="Keep a rolling window of scored rows per clinic and export its drift "
        "against the model's reference profile on /metrics (alliance_risk_drift_*).",
    )
    drift_window_clients: int = Field(
        500,
        ge=10,
        le=100_000,
        description="Clients kept per clinic, per worker, each with their latest history (a "
        "client scored again replaces it); the least recently scored client leaves first.",
    )
    drift_window_rows: int = Field(
        6000,
        ge=10,
        le=2_000_000,
        description="Appointments kept per clinic, per worker, over all its clients (each "
        "client keeps those up to the model's k_max); above it the least recently scored "
        "clients leave. With 6 ratings an appointment takes 72 bytes.",
    )
    drift_window_max_age_s: float = Field(
        30 * 24 * 3600.0,
        ge=0,
        description="A client not scored for this long leaves the window even when it is not "
        "full; 0 keeps them until newer clients push them out.",
    )
    drift_min_clients: int = Field(
        MIN_CLIENTS,
        ge=1,
        description="Distinct clients a clinic's window needs before its drift is judged "
        "(default models.drift.MIN_CLIENTS).",
    )
    drift_interval_s: float = Field(
        60.0, gt=0, description="Seconds between recomputations of the drift gauges."
    )
    drift_max_clinics: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Clinics tracked per worker (each adds series to /metrics); rows of "
        "further clinics are counted in alliance_risk_drift_untracked_rows.",
    )
    shadow_enabled: bool = Field(
        True,
        description="When model_uri is models:/<name>@champion and <name> has a version with "
        "the shadow_alias, load it too and score every scored request with it off the response "
        "path; the comparisons go to shadow_log_path and /metrics, never to the response.",
    )
    shadow_alias: str = Field("challenger", min_length=1, description="The challenger's alias.")
    shadow_queue_size: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Scored clients waiting for the challenger, per worker; the clients of a "
        "request that does not fit are left out of the shadow and counted "
        "(alliance_risk_shadow_dropped), never waited for.",
    )
    shadow_batch_wait_s: float = Field(
        0.25,
        ge=0,
        le=10,
        description="The challenger scores what queued up in this many seconds in one pass: "
        "fewer, larger passes contend less with the requests being served.",
    )
    shadow_log_path: Path = Field(
        default_factory=lambda: _data_dir() / "shadow.jsonl",
        description="JSON-lines file of shadow comparisons (two probabilities, two bands, two "
        "versions per client; nothing that identifies the client). Default <project root>/"
        ".alliance-risk/shadow.jsonl.",
    )
    shadow_log_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        description="Above this size the comparison file is renamed to <file>.1 (replacing an "
        "older one) and a new one is started: at most about twice this on disk.",
    )

    cds_public_url: str | None = Field(
        None,
        description="Public base URL of this service as EHRs call it (https://risk.example.org). "
        "CDS Hooks tokens must name <this>/cds-services/<id> as aud, and card links point "
        "under it. Unset: CDS Hooks service calls answer 503 (discovery still works).",
    )
    cds_low_risk_card: Literal["none", "info"] = Field(
        "none",
        description="What a CDS Hooks call answers for a low-risk patient: no card, or an info "
        "card.",
    )
    cds_whatif_scenarios: int = Field(
        2,
        ge=0,
        le=6,
        description="What-if scenarios (the largest falls in risk) in a card's detail; 0 "
        "leaves them out and saves their scoring.",
    )
    cds_cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) allowed to call /cds-services "
        "(a browser-hosted EHR or the CDS Hooks sandbox). Empty: no CORS headers there.",
    )
    cds_fetch_connect_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Connect timeout of a missing-prefetch FHIR fetch."
    )
    cds_fetch_read_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Read timeout of a missing-prefetch FHIR fetch."
    )
    store_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the client store (episodes, sessions, outcomes, risk "
        "history): sqlite:///<path> or postgresql+psycopg2://user@host/db. Default: SQLite "
        "file <project root>/.alliance-risk/store.db. See docs/store.md.",
    )
    store_connect_timeout_s: float = Field(
        3.0,
        gt=0,
        le=60,
        description="Seconds to wait for a database connection; past it the store's routes "
        "answer 503 with Retry-After (POST /v1/risk does not use the store).",
    )
    store_statement_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Longest database statement (PostgreSQL statement_timeout) and longest "
        "wait for SQLite's writer lock (busy_timeout).",
    )
    store_migrate_on_start: bool = Field(
        True,
        description="Upgrade the store's schema to the newest migration when the service first "
        "reaches the database. Off: run `alliance-risk db upgrade`; until then the store's "
        "routes answer 503.",
    )
    idempotency_key_ttl_s: float = Field(
        86_400.0,
        ge=60,
        le=30 * 86_400,
        description="How long a stored Idempotency-Key answers replays (default 24 h). Past "
        "it the key is forgotten: the same key is a new request. Expired keys are purged by "
        "later keyed writes, a bounded number at a time.",
    )
    rescore_enabled: bool = Field(
        True,
        description="When a new champion is served, rescore every open stored episode with it "
        "in the background (one worker at a time, by a lease in the store).",
    )
    rescore_batch_size: int = Field(
        1000,
        ge=1,
        le=20_000,
        description="Episodes per rescoring batch (one read, one scoring pass, one short write "
        "transaction).",
    )
    rescore_mode: Literal["process", "thread"] = Field(
        "process",
        description="Where rescoring runs: 'process' (default), a process of its own that "
        "loads the same model version, so rescoring and serving each get a core; 'thread', a "
        "thread of the serving process (sharing its GIL). An app built with an injected model "
        "loader or registry client (tests) rescores in a thread: those cannot cross processes.",
    )
    rescore_check_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often the rescoring thread looks without being woken: to finish "
        "what a worker that died left (its lease expires after twice this).",
    )

    def resolved_store_url(self) -> str:
        """``store_url``, or the default SQLite file under the data folder."""
        return self.store_url or f"sqlite:///{_data_dir() / 'store.db'}"

    @field_validator("cds_cors_origins")
    @classmethod
    def _exact_cds_origins(cls, origins: list[str]) -> list[str]:
        from service.limits import _normalise_origin  # the API's own CORS rule

        return [_normalise_origin(origin) for origin in origins]

    @field_validator("cds_public_url")
    @classmethod
    def _public_url_is_a_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError("cds_public_url must be an http(s) base URL without a query")
        return value.rstrip("/")

    @field_validator("model_uri")
    @classmethod
    def _model_uri_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model_uri must not be empty")
        return value.strip()


@lru_cache
def get_settings() -> ServiceSettings:
    """The process's settings, read from the environment once (tests override the dependency)."""
    return ServiceSettings()
