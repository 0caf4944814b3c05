"""The served model: load, check, swap atomically, and watch the registry alias.

A request takes :attr:`ModelStore.current` once and scores on that :class:`LoadedModel` to the
end, so a swap never changes the model under an in-flight request. A new version is loaded,
warmed up and self-checked before it replaces the current one; if the registry cannot be reached
or the new version fails its checks, the current model keeps serving and the status says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from features.arrays import SessionArrays
from features.profiles import InstrumentProfile
from models.scorer import Scorer
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

ReloadResult = Literal["loaded", "unchanged", "refused", "registry_unreachable", "no_champion"]


@dataclass(frozen=True)
class LoadedModel:
    """A scorer that passed its checks, and where it came from."""

    scorer: Scorer
    name: str
    version: str
    alias: str | None
    loaded_at: datetime


@dataclass(frozen=True)
class Target:
    """What a model URI points at now: the concrete URI to load and its name/version/alias."""

    uri: str
    name: str
    version: str
    alias: str | None


@dataclass
class StoreStatus:
    """Outcome of the last reload attempt (for /readyz and the logs). No client data."""

    registry: Literal["ok", "unreachable", "unknown"] = "unknown"
    last_result: ReloadResult | None = None
    last_checked: float | None = None
    detail: str | None = None
    refused_version: str | None = None


def warmup_arrays(profile: InstrumentProfile) -> SessionArrays:
    """A synthetic six-appointment history on ``profile``'s scale (no real client)."""
    lo, hi = profile.scale_min, profile.scale_max
    n = 6
    level = lo + (hi - lo) * np.array([0.85, 0.8, np.nan, 0.7, 0.6, np.nan])
    ratings = np.tile(level, (len(profile.element_names), 1))
    return SessionArrays.single_client(
        profile,
        session_number=np.arange(1, n + 1),
        session_date=np.datetime64("2026-01-05") + np.arange(n) * np.timedelta64(7, "D"),
        attendance=["attended", "attended", "no_show", "attended", "attended", "no_show"],
        ratings=ratings,
        intake_date=np.datetime64("2026-01-01"),
        age=30.0,
    )


def check_scorer(scorer: Scorer) -> None:
    """Warm up and self-check ``scorer``; raises if it cannot score or its output is invalid."""
    arrays = warmup_arrays(scorer.profile)
    batch = scorer.score_arrays(arrays, landmarks="latest")
    scorer.self_check(batch.features)


def resolve_target(model_uri: str, client_factory: Callable[[], object]) -> Target:
    """Resolve ``models:/name@alias`` to its current version (a registry call).

    ``models:/name/N`` and other URIs are returned as they are (not watched).
    Raises ``LookupError`` when the alias does not exist (no champion yet).
    """
    if not model_uri.startswith("models:/"):
        return Target(model_uri, model_uri, "local", None)
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        client = client_factory()
        try:
            mv = client.get_model_version_by_alias(name, alias)  # type: ignore[attr-defined]
        except Exception as exc:
            if _is_missing(exc):
                raise LookupError(f"no version of {name!r} has the alias {alias!r}") from None
            raise
        version = str(mv.version)
        return Target(f"models:/{name}/{version}", name, version, alias)
    name, _, version = ref.partition("/")
    return Target(model_uri, name, version, None)


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


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
    """

    def __init__(
        self,
        model_uri: str,
        metrics: ServiceMetrics,
        *,
        loader: Callable[[str], Scorer] | None = None,
        client_factory: Callable[[], object] | None = None,
    ) -> None:
        self.model_uri = model_uri
        self.metrics = metrics
        self._loader = loader or _default_loader
        self._client_factory = client_factory or _default_client
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self.status = StoreStatus()
        metrics.model_loaded.set(0)

    @property
    def current(self) -> LoadedModel | None:
        """The model to score with; read it once per request."""
        return self._current

    def refresh(self) -> ReloadResult:
        """Check the alias and, if it moved, load, check and swap in the new version."""
        with self._reload_lock:
            result = self._refresh()
        self.status.last_result = result
        self.status.last_checked = time.time()
        self.metrics.reloads.labels(result=result).inc()
        return result

    def _refresh(self) -> ReloadResult:
        try:
            target = resolve_target(self.model_uri, self._client_factory)
        except LookupError as exc:
            self._registry(True)
            self.status.detail = str(exc)
            logger.warning("no model to serve", extra={"fields": {"detail": str(exc)}})
            return "no_champion"
        except Exception as exc:
            self._registry(False)
            self.status.detail = f"model registry unreachable ({type(exc).__name__})"
            logger.warning(
                "model registry unreachable; the current model keeps serving",
                extra={"fields": {"error": type(exc).__name__}},
            )
            return "registry_unreachable"
        self._registry(True)
        current = self._current
        if current is not None and (current.name, current.version) == (target.name, target.version):
            self.status.detail = None
            return "unchanged"
        if target.version == self.status.refused_version and current is not None:
            return "refused"  # already refused; not retried on every poll
        try:
            scorer = self._loader(target.uri)
            check_scorer(scorer)
        except Exception as exc:
            self.status.refused_version = target.version
            self.status.detail = f"version {target.version} refused: {type(exc).__name__}" + (
                "" if current is None else f"; version {current.version} keeps serving"
            )
            logger.error(
                "new model version refused",
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
        self.metrics.model_loaded.set(1)
        self.metrics.model_info.info(
            {"name": loaded.name, "version": loaded.version, "alias": loaded.alias or ""}
        )
        logger.info(
            "model loaded",
            extra={
                "fields": {
                    "model_name": loaded.name,
                    "model_version": loaded.version,
                    "previous_version": None if current is None else current.version,
                }
            },
        )
        return "loaded"

    def _registry(self, up: bool) -> None:
        self.status.registry = "ok" if up else "unreachable"
        self.metrics.registry_up.set(1 if up else 0)


def _default_loader(uri: str) -> Scorer:
    from models.pyfunc import load_scorer

    return load_scorer(uri)


def _default_client() -> object:
    from mlflow import MlflowClient

    return MlflowClient()
