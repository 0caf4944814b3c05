"""MLflow pyfunc glue: one self-contained model holding a saved :class:`~models.scorer.Scorer`.

The logged model's artifact ``scorer/`` is the scorer directory (booster, calibrator, feature
registry with the instrument profile, risk bands, metadata). ``predict`` takes raw episodes, the
episode frame of :mod:`models.episode_frame` (one row per appointment with the client's fields
repeated, the same contract as ``alliance-risk score`` and ``POST /v1/risk``), and returns one row
per client: probability, risk band and the top drivers. ``mlflow models serve`` of the artifact is
therefore useful on its own. The API loads the same model and calls
:attr:`AllianceRiskModel.scorer` directly, so the service needs nothing but
``models:/<name>@champion`` to score.

Logging happens in ``training`` (the only MLflow writer); this module only defines the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.pyfunc import PythonModel

from models.episode_frame import (
    RESULT_COLUMNS,
    EpisodeFrameError,
    episodes_from_frame,
    example_frame,
    input_schema,
    score_row,
)
from models.scorer import Scorer

SCORER_ARTIFACT = "scorer"
#: The ``predict`` parameter: score at appointment ``k`` instead of each client's latest (0).
LANDMARK_PARAM = "landmark"


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
        """Score raw episodes; see :func:`predict_episodes`. A frame that breaks the data
        contract raises ``MlflowException`` (HTTP 400 from ``mlflow models serve``) naming the
        rows and columns, never a value."""
        from mlflow.exceptions import MlflowException

        landmark = int((params or {}).get(LANDMARK_PARAM) or 0)
        try:
            return predict_episodes(self.scorer, model_input, landmark=landmark)
        except EpisodeFrameError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None


def predict_episodes(scorer: Scorer, frame: pd.DataFrame, *, landmark: int = 0) -> pd.DataFrame:
    """Score the episodes of an episode frame (:mod:`models.episode_frame`) with ``scorer``.

    Parameters
    ----------
    scorer : Scorer
        The model.
    frame : pandas.DataFrame
        One row per appointment, the client's fields repeated on its rows
        (:func:`models.episode_frame.frame_columns`).
    landmark : int, default 0
        0 scores each client at its latest appointment; ``k > 0`` at the appointment numbered
        ``k`` (clients without one get no row).

    Returns
    -------
    pandas.DataFrame
        One row per scored client, in order of first appearance, columns
        :data:`models.episode_frame.RESULT_COLUMNS`: probability, risk band, base probability
        and the top three drivers (group, signed contribution, sentence, focus).

    Raises
    ------
    EpisodeFrameError
        The frame breaks the data contract (rows and columns named), or ``landmark < 0``.
    """
    if landmark < 0:
        raise EpisodeFrameError(f"{LANDMARK_PARAM} must be 0 (latest) or an appointment number")
    episodes = episodes_from_frame(frame, scorer.profile)
    scored = scorer.score(episodes, landmarks=landmark or "latest")
    return pd.DataFrame([score_row(s) for s in scored.results], columns=list(RESULT_COLUMNS))


def model_signature(scorer: Scorer) -> Any:
    """The logged model's ``ModelSignature``: the episode frame on the scorer's profile in, one
    row per client out, and the ``landmark`` parameter (default 0, the latest)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    number = {"landmark": DataType.long, "probability": DataType.double}
    number |= {"base_probability": DataType.double}
    number |= {f"contribution_{i}": DataType.double for i in range(1, 4)}
    unknowable = ("clinic_id", "therapist_id")
    per_driver = ("group_", "contribution_", "driver_", "focus_")
    outputs = Schema(
        [
            ColSpec(
                number.get(name, DataType.string),
                name,
                required=not name.startswith(per_driver) and name not in unknowable,
            )
            for name in RESULT_COLUMNS
        ]
    )
    return ModelSignature(
        inputs=input_schema(scorer.profile),
        outputs=outputs,
        params=ParamSchema([ParamSpec(LANDMARK_PARAM, DataType.long, 0)]),
    )


def input_example(scorer: Scorer) -> pd.DataFrame:
    """A made-up episode on the scorer's profile, stored with the model as its input example."""
    return example_frame(scorer.profile)


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
