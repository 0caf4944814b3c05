"""MLflow pyfunc glue: one self-contained model holding a saved :class:`~models.scorer.Scorer`.

The logged model's artifact ``scorer/`` is the scorer directory (booster, calibrator, feature
registry with the instrument profile, risk bands, metadata). ``predict`` takes precomputed feature
rows (the signature lists every registry column, in order) and returns probability, band and
calibrated log-odds; ``mlflow models serve`` can therefore serve it as it is. The API loads the
same model and calls :attr:`AllianceRiskModel.scorer` directly on raw session histories, so the
service needs nothing but ``models:/<name>@champion`` to score.

Logging happens in ``training`` (the only MLflow writer); this module only defines the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from models.scorer import Scorer

SCORER_ARTIFACT = "scorer"


class AllianceRiskModel(PythonModel):
    """Pyfunc wrapper; the state lives in the ``scorer`` artifact, not in the pickle."""

    _scorer: Scorer | None = None

    def load_context(self, context: Any) -> None:
        self._scorer = Scorer.load(context.artifacts[SCORER_ARTIFACT])

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            raise RuntimeError("model context not loaded")
        return self._scorer

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score feature rows; see :func:`predict_frame`."""
        return predict_frame(self.scorer, model_input)


def predict_frame(scorer: Scorer, model_input: pd.DataFrame) -> pd.DataFrame:
    """Score feature rows: columns must include every registry feature (NaN = missing).

    Returns a frame with ``probability``, ``risk_band`` and ``logit`` (the log-odds of the
    returned probability) per input row, on the input's index. No explanation is computed:
    this is the plain prediction path (explanations come from :meth:`Scorer.score`).
    """
    names = list(scorer.feature_names)
    missing = [c for c in names if c not in model_input.columns]
    if missing:
        raise ValueError(f"model input lacks {len(missing)} feature column(s), e.g. {missing[0]}")
    X = model_input[names].to_numpy(dtype=np.float64, na_value=np.nan)
    p = scorer.predict_proba(X)
    finite = np.clip(p, 1e-12, 1.0 - 1e-12)  # keeps the log-odds finite at saturation
    return pd.DataFrame(
        {
            "probability": p,
            "risk_band": scorer.bands.assign(p).astype(str),
            "logit": np.log(finite) - np.log1p(-finite),
        },
        index=model_input.index,
    )


@dataclass(frozen=True)
class ModelRef:
    """Which model version a model URI names now.

    ``uri`` is the pinned URI to load (``models:/<name>/<version>``), so that what is loaded
    and what is reported cannot differ even if the alias moves in between. A URI outside the
    registry (a run or a path) is its own name, with version ``local``.
    """

    uri: str
    name: str
    version: str
    alias: str | None


def resolve_model(model_uri: str, client: Callable[[], Any] | None = None) -> ModelRef:
    """Resolve ``models:/<name>@<alias>`` to its current version (one registry call).

    ``models:/<name>/<version>`` and other URIs are returned as they are.

    Parameters
    ----------
    model_uri
        The URI to resolve.
    client
        ``() -> MlflowClient``; default a client on the configured tracking URI.

    Raises
    ------
    LookupError
        The alias names no version (for example: no champion promoted yet).
    """
    if not model_uri.startswith("models:/"):
        return ModelRef(model_uri, model_uri, "local", None)
    ref = model_uri.removeprefix("models:/")
    if "@" not in ref:
        name, _, version = ref.partition("/")
        return ModelRef(model_uri, name, version, None)
    name, alias = ref.split("@", 1)
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient
    try:
        found = client().get_model_version_by_alias(name, alias)
    except Exception as exc:
        if getattr(exc, "error_code", "") in _MISSING:
            raise LookupError(f"no version of {name!r} has the alias {alias!r}") from None
        raise
    version = str(found.version)
    return ModelRef(f"models:/{name}/{version}", name, version, alias)


#: MLflow error codes meaning "no such model or alias" (as opposed to an unreachable registry).
_MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def load_scorer(model_uri: str) -> Scorer:
    """The scorer inside a logged model, e.g. ``models:/alliance-risk@champion``.

    Raises whatever MLflow raises when the URI cannot be resolved, and
    :class:`models.scorer.IncompatibleModelError` when the model is not a usable scorer.
    """
    from models.scorer import IncompatibleModelError

    before = list(sys.path)
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    finally:
        # MLflow puts the model's code folder in front of sys.path on every load and leaves it
        # there: a service reloading at every alias move would grow sys.path without bound, and
        # a module first imported later would come from whichever artifact loaded last. The
        # scorer runs on the installed code (its packages are imported already): take them out.
        added = len(sys.path) - len(before)
        if added > 0 and sys.path[added:] == before:
            del sys.path[:added]
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, AllianceRiskModel):
        raise IncompatibleModelError("the model is not an alliance-risk model")
    return inner.scorer
