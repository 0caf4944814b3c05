"""Batch scoring of a cohort through the model's scorer (the same object the API calls)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.contract import CLIENT_ID
from models.pyfunc import load_scorer


@dataclass(frozen=True)
class CohortScores:
    """One row per scored client, and how many clients had no such landmark."""

    frame: pd.DataFrame
    model_name: str
    model_version: str
    not_scored: int


def resolve_model_version(model_uri: str) -> tuple[str, str]:
    """(name, version) behind a ``models:/name@alias`` or ``models:/name/N`` URI, else the URI."""
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        return model_uri, ""
    ref = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = ref.partition("/")
    return name, version


def score_cohort(
    model_uri: str,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    *,
    landmark: int | None = None,
) -> CohortScores:
    """Score every client of normalised tables at their latest landmark (or at ``landmark``)."""
    name, version = resolve_model_version(model_uri)
    # Pin the resolved version so the scores and the version reported cannot diverge.
    scorer = load_scorer(f"models:/{name}/{version}" if version else model_uri)
    batch = scorer.score_frames(
        sessions, clients, landmarks="latest" if landmark is None else landmark
    )
    frame = batch.to_frame(top_groups=3).reset_index()
    frame["model_name"] = name
    frame["model_version"] = version
    n_clients = clients[CLIENT_ID].nunique()
    return CohortScores(frame, name, version, int(n_clients - frame[CLIENT_ID].nunique()))
