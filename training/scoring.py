"""Scoring a caseload from files: the analysts' view of what the API gives EHRs.

The model's scorer checks, scores and explains the episodes (the same call the API makes);
this module picks the episodes (open ones by default), and flattens each result into one row of
a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import CLIENT_ID, ONGOING, OUTCOME
from features.episodes import Episodes
from features.profiles import InstrumentProfile
from models.episode_frame import TOP, score_row
from models.pyfunc import load_scorer, resolve_model
from models.scorer import Scorer


@dataclass(frozen=True)
class CohortScores:
    """One row per scored client, and why the others were not scored.

    ``no_appointments`` counts clients with no appointment yet (nothing to score);
    ``not_at_landmark`` clients with no appointment numbered as the requested landmark;
    ``refused`` clients whose episode breaks the data contract (none after validation);
    ``skipped_ended`` clients left out because their episode has ended (see ``include_ended``).
    """

    frame: pd.DataFrame
    model_name: str
    model_version: str
    no_appointments: int
    not_at_landmark: int
    refused: int
    skipped_ended: int


COLUMNS = (
    "client_id", "clinic_id", "therapist_id", "landmark", "probability", "risk_band",
    "base_probability", "space", "scored_at",
    *(f"{kind}_{i}" for i in range(1, TOP + 1)
      for kind in ("group", "contribution", "driver", "focus")),
    "model_name", "model_version",
)  # fmt: skip


def score_cohort(
    model_uri: str,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    profile: InstrumentProfile,
    *,
    landmark: int | None = None,
    include_ended: bool = False,
) -> CohortScores:
    """Score the clients of normalised, validated tables at their latest appointment (or at
    ``landmark``).

    Parameters
    ----------
    model_uri
        ``models:/<name>@<alias>`` (resolved once, so the scores and the version reported
        cannot differ), ``models:/<name>/<version>``, or another MLflow model URI.
    sessions, clients
        Tables as :func:`features.validation.validate_and_normalise` returns them.
    profile
        Their instrument profile (a model trained on another one refuses them).
    landmark
        Score at appointment ``k`` instead of each client's latest.
    include_ended
        Score every client; by default only open episodes (outcome ``ongoing``): the caseload.
    """
    ref = resolve_model(model_uri)
    return score_tables(
        load_scorer(ref.uri),
        sessions,
        clients,
        profile,
        model_name=ref.name,
        model_version=ref.version,
        landmark=landmark,
        include_ended=include_ended,
    )


def score_tables(
    scorer: Scorer,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    profile: InstrumentProfile,
    *,
    model_name: str,
    model_version: str,
    landmark: int | None = None,
    include_ended: bool = False,
) -> CohortScores:
    """:func:`score_cohort` with a loaded ``scorer``: the one scoring path of both engines (the
    Dask engine calls it on each client partition). Rows are sorted by ``client_id``."""
    open_ = clients[OUTCOME] == ONGOING
    chosen = clients if include_ended else clients[open_]
    seen = chosen[CLIENT_ID].isin(sessions[CLIENT_ID])
    episodes = Episodes.from_frames(
        sessions[sessions[CLIENT_ID].isin(chosen[CLIENT_ID])], chosen[seen], profile
    )
    scored = scorer.score(episodes, landmarks="latest" if landmark is None else landmark)
    frame = pd.DataFrame([score_row(s) for s in scored.results], columns=list(COLUMNS))
    frame["model_name"] = model_name
    frame["model_version"] = model_version
    return CohortScores(
        frame=frame.sort_values(CLIENT_ID, kind="stable", ignore_index=True),
        model_name=model_name,
        model_version=model_version,
        no_appointments=int((~seen).sum()),
        not_at_landmark=episodes.n_episodes - len(scored.problems) - np.unique(scored.episode).size,
        refused=len(scored.problems),
        skipped_ended=0 if include_ended else int((~open_).sum()),
    )
