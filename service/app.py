"""The FastAPI application factory: ``create_app(settings)``.

The model is loaded in the lifespan (``app.state.store``), the alias is polled in the
background, and every request carries a ``request_id``. Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from models.scorer import Scorer
from models.store import tracking_uri
from service.audit import ClientRefs
from service.audit_log import AuditLog, AuditSettings
from service.auth import Authenticator, AuthSettings, describe
from service.cds.cors import CdsCorsMiddleware
from service.cds.prefetch import redact_httpx_logs
from service.dashboard import install_dashboard
from service.drift_window import DriftConfig, DriftWindows
from service.errors import install_error_handlers
from service.fhir.errors import FhirErrorMiddleware
from service.limits import LimitSettings, RateLimiter, install_limits
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.middleware import RequestContextMiddleware
from service.model_store import ModelStore
from service.routers import caseload, cds, clients, docs, health, model, risk, whatif
from service.routers.fhir import router as fhir_router
from service.security import AuditMiddleware, Security
from service.settings import ServiceSettings
from service.shadow import ComparisonLog, ScoreObserver, ShadowScorer, challenger_uri
from service.store.db import Store, StoreUnavailable
from service.store.rescore import RescoreMetrics, Rescorer, RescoreWatcher
from service.store.rescore_process import job_for

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Calibrated risk that a psychotherapy client drops out of treatment, from the trajectory of the
therapeutic alliance and attendance, explained by alliance element (empathy, acceptance, trust,
goals, collaboration, communication), attendance and engagement, with drivers in clinician
language and a focus suggestion for each alliance driver.

Intended use: prompting an alliance check-in or outreach. Never for discharge or rationing care.
"""


def _configure_registry(settings: ServiceSettings) -> None:
    """Point MLflow at the tracking store and bound its HTTP retries, before the first load."""
    import mlflow

    # A registry outage must be noticed within seconds, not after MLflow's default retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(settings.registry_timeout_s)))
    uri = settings.tracking_uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def build_security(
    auth: AuthSettings | None = None,
    limits: LimitSettings | None = None,
    audit: AuditSettings | None = None,
) -> tuple[Security, LimitSettings, AuthSettings]:
    """Authenticator, rate limiter and audit log from settings (default: the environment).

    Raises a pydantic ``ValidationError`` when ``ALLIANCE_RISK_AUTH_MODE`` is not set: the
    service never starts without authentication.
    """
    auth = auth or AuthSettings()  # mode comes from the environment
    limits = limits or LimitSettings()
    audit = audit or AuditSettings()
    replay = None  # one process: the authenticator's own in-memory cache
    if limits.shared_dir is not None:  # serve --workers N: one set of used jti for all
        from service.shared_limits import SharedJtiReplayCache

        replay = SharedJtiReplayCache(limits.shared_dir, auth.replay_cache_size)
    security = Security(
        authenticator=Authenticator(auth, replay_cache=replay),
        limiter=RateLimiter.from_settings(limits),
        audit=audit.open_log(),
        refs=ClientRefs(audit.load_key()),
    )
    return security, limits, auth


def create_app(
    settings: ServiceSettings | None = None,
    *,
    auth: AuthSettings | None = None,
    limits: LimitSettings | None = None,
    audit: AuditSettings | None = None,
    loader: Callable[[str], Scorer] | None = None,
    client_factory: Callable[[], Any] | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    """Build the app.

    Parameters
    ----------
    settings
        Default: read from the environment (``ALLIANCE_RISK_*``).
    auth, limits, audit
        Security settings; default from the environment (``ALLIANCE_RISK_AUTH_*``,
        ``ALLIANCE_RISK_LIMIT_*``, ``ALLIANCE_RISK_AUDIT_*``). There is no way to turn
        authentication off: ``ALLIANCE_RISK_AUTH_MODE`` must say jwt, api_key or dev.
    loader, client_factory
        Override how a model URI is loaded and how the registry is reached (tests use real
        models and registries; these exist to inject failures such as an outage).
    configure_logs
        Install the JSON log handler (off when an embedding process owns logging).
    """
    settings = settings or ServiceSettings()
    redact_httpx_logs()  # CDS Hooks fetch URLs name patients
    metrics = ServiceMetrics()
    rescore_metrics = RescoreMetrics(metrics)
    security, limit_settings, auth_settings = build_security(auth, limits, audit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level)
        if client_factory is None:
            _configure_registry(settings)
        store = ModelStore(
            settings.model_uri, metrics, loader=loader, client_factory=client_factory
        )
        app.state.store = store
        level = logging.WARNING if auth_settings.mode == "dev" else logging.INFO
        logger.log(level, "authentication", extra={"fields": {"auth": describe(auth_settings)}})
        warmed = await run_in_threadpool(security.authenticator.warm)
        if warmed and not all(warmed.values()):
            logger.warning("some issuers' signing keys could not be loaded yet",
                           extra={"fields": {"issuers": sorted(k for k, ok in warmed.items()
                                                               if not ok)}})  # fmt: skip
        # Route work shares a pool of settings.route_threads threads (see its description).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.route_threads
        result = await store.refresh_in_thread()
        client_store = app.state.client_store = Store.from_settings(settings)
        await _open_client_store(client_store)
        shadow = _shadow(settings, metrics, loader, client_factory)
        stores = [store] if shadow is None else [store, shadow.store]
        if shadow is not None:
            await shadow.store.refresh_in_thread()
            shadow.start()
            observers.append(shadow)
        drift = _drift(settings, metrics)
        if drift is not None:
            drift.start()
            observers.append(drift)
        rescore = _rescore(settings, store, client_store, rescore_metrics, security.audit,
                           in_process=loader is not None or client_factory is not None,
                           configure_logs=configure_logs)  # fmt: skip
        app.state.rescore = rescore
        # What is alive now (libraries, the model) lives as long as the process: moved out of the
        # cyclic collector's reach (CPython's gc.freeze), a full collection, which a batch of a
        # thousand clients triggers about once, walks the batch's objects instead of ~250,000
        # library objects (bench_service: a batch's time halved). Frozen objects are still freed
        # by reference counting, so a replaced model goes (tests/service/test_api.py).
        gc.collect()
        gc.freeze()
        logger.info(
            "service started",
            extra={"fields": {"model_uri": settings.model_uri, "load": result}},
        )
        poller = (
            asyncio.create_task(_poll(stores, settings.poll_interval_s))
            if settings.poll_interval_s > 0
            else None
        )
        try:
            yield
        finally:
            gc.unfreeze()  # an embedding process (or a test) gets its collector back
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            observers.clear()
            if shadow is not None:
                await run_in_threadpool(shadow.close)
            if drift is not None:
                await run_in_threadpool(drift.close)
            if rescore is not None:
                await run_in_threadpool(rescore.close)
            metrics.close()
            await run_in_threadpool(client_store.close)

    app = FastAPI(
        title="alliance-risk",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by routers/docs.py instead, with the assets from an installed package.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.security = security
    # What scored a request tells, after its response is built (the shadow challenger).
    observers: list[ScoreObserver] = []
    app.state.observers = observers
    install_error_handlers(app)
    # Starlette matches routes in order: the polled ones (a caseload 304 every few seconds per
    # dashboard) come right after scoring, before the many FHIR and CDS routes.
    app.include_router(risk.router)
    app.include_router(caseload.router)
    app.include_router(clients.router)
    app.include_router(whatif.router)
    app.include_router(model.router)
    app.include_router(health.router)
    app.include_router(fhir_router)
    app.include_router(cds.router)
    install_dashboard(app)  # /dashboard/ pages and their stylesheet
    if settings.docs_enabled:
        app.include_router(docs.router)
    # Middleware added last runs first: request id -> audit -> CORS -> timeout -> body size ->
    # FastAPI.
    install_limits(app, limit_settings)
    app.add_middleware(AuditMiddleware)
    if settings.cds_cors_origins:  # outside the audit: a preflight carries no data
        app.add_middleware(CdsCorsMiddleware, origins=settings.cds_cors_origins)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, refs=security.refs)
    app.add_middleware(FhirErrorMiddleware)  # outermost: every /fhir error as OperationOutcome
    return app


def _shadow(
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    loader: Callable[[str], Scorer] | None,
    client_factory: Callable[[], Any] | None,
) -> ShadowScorer | None:
    """The shadow challenger's scorer, when the service watches a champion alias."""
    uri = challenger_uri(settings.model_uri, settings.shadow_alias)
    if not settings.shadow_enabled or uri is None:
        return None
    store = ModelStore(uri, metrics, loader=loader, client_factory=client_factory,
                       challenger=True)  # fmt: skip
    return ShadowScorer(
        store,
        metrics,
        ComparisonLog(settings.shadow_log_path, settings.shadow_log_max_bytes),
        queue_size=settings.shadow_queue_size,
        batch_wait_s=settings.shadow_batch_wait_s,
    )


def _drift(settings: ServiceSettings, metrics: ServiceMetrics) -> DriftWindows | None:
    """The per-clinic drift windows behind the alliance_risk_drift_* gauges."""
    if not settings.drift_enabled:
        return None
    config = DriftConfig(
        window_clients=settings.drift_window_clients,
        window_rows=settings.drift_window_rows,
        max_age_s=settings.drift_window_max_age_s,
        min_clients=settings.drift_min_clients,
        interval_s=settings.drift_interval_s,
        max_clinics=settings.drift_max_clinics,
    )
    return DriftWindows(metrics, config)


def _rescore(
    settings: ServiceSettings,
    store: ModelStore,
    client_store: Store,
    metrics: RescoreMetrics,
    audit: AuditLog | None = None,
    *,
    in_process: bool = False,
    configure_logs: bool = True,
) -> RescoreWatcher | None:
    """The thread that rescores stored open episodes when the served version changes (and
    once at start-up, in case the stored scores are from an older champion), in a process of
    its own unless ``rescore_mode`` is ``thread`` or ``in_process`` (an injected loader)."""
    if not settings.rescore_enabled:
        return None
    rescorer = Rescorer(
        client_store,
        batch_size=settings.rescore_batch_size,
        lease_s=max(60.0, 2 * settings.rescore_check_interval_s),
        max_sessions=settings.max_sessions,
        metrics=metrics,
        audit=audit,  # one clients.rescore record per run
    )
    job = None
    if settings.rescore_mode == "process" and not in_process:
        job = lambda model: job_for(settings, model, rescorer, configure_logs=configure_logs)  # noqa: E731
    watcher = RescoreWatcher(rescorer, lambda: store.current,
                             check_interval_s=settings.rescore_check_interval_s, job=job)  # fmt: skip
    store.listeners.append(watcher.notify)
    watcher.start()
    return watcher


async def _open_client_store(client_store: Store) -> None:
    """Migrate the client store (unless turned off); with the database down the service still
    starts: POST /v1/risk does not need it, and the store's routes answer 503 until it is back."""
    try:
        await run_in_threadpool(client_store.ensure_ready)
    except StoreUnavailable as exc:
        logger.warning("client store unavailable at start; its routes answer 503 until it is back",
                       extra={"fields": {"reason": exc.reason}})  # fmt: skip


async def _poll(stores: list[ModelStore], interval: float) -> None:
    """Check the aliases every ``interval`` seconds, off the event loop."""
    while True:
        await asyncio.sleep(interval)
        for store in stores:
            try:
                await store.refresh_in_thread()
            except Exception as exc:  # a poll must never kill the poller
                logger.error("reload check failed",
                             extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
