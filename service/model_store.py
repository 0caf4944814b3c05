"""The served model: load, check, swap atomically, and watch the registry alias.

A request takes :attr:`ModelStore.current` once and scores on that :class:`LoadedModel` to the
end, so a swap never changes the model under an in-flight request. A new version is loaded,
warmed up and self-checked before it replaces the current one; if the registry cannot be reached
or the new version fails its checks, the current model keeps serving and the status says why.

The same store, with ``challenger=True``, holds the shadow challenger (:mod:`service.shadow`):
same load and checks, its own series on /metrics, and when its alias is removed it is dropped
(a champion is kept instead: something must serve).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import anyio.to_thread

from models.pyfunc import load_scorer, resolve_model
from models.scorer import Scorer
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

ReloadResult = Literal[
    "loaded", "unchanged", "refused", "registry_unreachable", "no_champion", "no_alias"
]


@dataclass(frozen=True)
class LoadedModel:
    """A scorer that passed its checks, and where it came from."""

    scorer: Scorer
    name: str
    version: str
    alias: str | None
    loaded_at: datetime


@dataclass
class StoreStatus:
    """Outcome of the last reload attempt (for /readyz and the logs). No client data."""

    registry: Literal["ok", "unreachable", "unknown"] = "unknown"
    last_result: ReloadResult | None = None
    last_checked: float | None = None
    detail: str | None = None
    refused_version: str | None = None


class ModelStore:
    """Holds the served model and reloads it when the watched alias moves.

    Parameters
    ----------
    model_uri
        ``models:/<name>@<alias>`` (watched) or any fixed MLflow model URI.
    metrics
        Where reload results, the loaded version and registry health are recorded.
    loader
        ``uri -> Scorer``; default :func:`models.pyfunc.load_scorer`.
    client_factory
        ``() -> MlflowClient``; default a client on the configured tracking URI.
    challenger
        This store holds the shadow challenger: it records the challenger's series, leaves the
        registry's health to the served model's store, and drops its model when the alias
        names no version any more.
    """

    def __init__(
        self,
        model_uri: str,
        metrics: ServiceMetrics,
        *,
        loader: Callable[[str], Scorer] | None = None,
        client_factory: Callable[[], Any] | None = None,
        challenger: bool = False,
    ) -> None:
        self.model_uri = model_uri
        self.metrics = metrics
        self.challenger = challenger
        self._series = metrics.store_series(challenger=challenger)
        self._role = "challenger" if challenger else "model"
        self._loader = loader or _default_loader
        self._client_factory = client_factory
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self._reload_thread: anyio.CapacityLimiter | None = None
        self.status = StoreStatus()
        self._series.loaded.set(0)
        #: Called with the new model after each swap (the rescoring watcher only wakes its
        #: thread: a listener must return at once, and one that raises is logged and ignored).
        self.listeners: list[Callable[[LoadedModel], None]] = []

    @property
    def current(self) -> LoadedModel | None:
        """The model to score with; read it once per request."""
        return self._current

    async def refresh_in_thread(self) -> ReloadResult:
        """:meth:`refresh` in a thread of its own: loading a model takes seconds and must hold
        up neither the event loop nor the threads that serve requests."""
        if self._reload_thread is None:
            self._reload_thread = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self.refresh, limiter=self._reload_thread)

    def refresh(self) -> ReloadResult:
        """Check the alias and, if it moved, load, check and swap in the new version."""
        with self._reload_lock:
            result = self._refresh()
        self.status.last_result = result
        self.status.last_checked = time.time()
        self._series.reloads.labels(result=result).inc()
        return result

    def _refresh(self) -> ReloadResult:
        try:
            target = resolve_model(self.model_uri, self._client_factory)
        except LookupError as exc:
            self._registry(True)
            self.status.detail = str(exc)
            if self.challenger:
                return self._drop()
            logger.warning("no model to serve", extra={"fields": {"detail": str(exc)}})
            return "no_champion"
        except Exception as exc:
            self._registry(False)
            self.status.detail = f"model registry unreachable ({type(exc).__name__})"
            logger.warning(
                "model registry unreachable; the current "
                + ("challenger stays" if self.challenger else "model keeps serving"),
                extra={"fields": {"error": type(exc).__name__}},
            )
            return "registry_unreachable"
        self._registry(True)
        current = self._current
        if current is not None and (current.name, current.version) == (target.name, target.version):
            self.status.detail = None
            return "unchanged"
        if target.version == self.status.refused_version and (
            current is not None or self.challenger
        ):
            # Already refused; not retried on every poll. (A store with no model to serve
            # keeps trying; a challenger is optional.)
            return "refused"
        try:
            scorer = self._loader(target.uri)
            scorer.self_check()
        except Exception as exc:
            self.status.refused_version = target.version
            self.status.detail = f"version {target.version} refused: {type(exc).__name__}" + (
                "" if current is None else f"; version {current.version} keeps serving"
            )
            logger.error(
                f"new {self._role} version refused",
                extra={"fields": {"model_version": target.version, "error": type(exc).__name__}},
            )
            return "refused"
        loaded = LoadedModel(
            scorer=scorer,
            name=target.name,
            version=target.version,
            alias=target.alias,
            loaded_at=datetime.now(UTC),
        )
        self._current = loaded  # one reference assignment: the swap is atomic
        self.status.refused_version = None
        self.status.detail = None
        self._series.loaded.set(1)
        self._series.info.info(
            {"name": loaded.name, "version": loaded.version, "alias": loaded.alias or ""}
        )
        logger.info(
            f"{self._role} loaded",
            extra={
                "fields": {
                    "model_name": loaded.name,
                    "model_version": loaded.version,
                    "previous_version": None if current is None else current.version,
                }
            },
        )
        for listener in self.listeners:
            try:
                listener(loaded)
            except Exception as exc:
                logger.error("model change listener failed",
                             extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
        return "loaded"

    def _drop(self) -> ReloadResult:
        """The challenger's alias is gone: stop shadow scoring with it."""
        previous, self._current = self._current, None
        self.status.refused_version = None
        self._series.loaded.set(0)
        self._series.info.clear()
        if previous is not None:
            logger.info("challenger alias removed; shadow scoring stopped",
                        extra={"fields": {"previous_version": previous.version}})  # fmt: skip
        return "no_alias"

    def _registry(self, up: bool) -> None:
        self.status.registry = "ok" if up else "unreachable"
        if self._series.registry_up is not None:
            self._series.registry_up.set(1 if up else 0)


def _default_loader(uri: str) -> Scorer:
    return load_scorer(uri)
