"""Promotion of a registered version to ``champion``, gated on the candidate's own test rows.

The candidate's training run stored its test split (pseudonymised) under ``evaluation/``.
Both the candidate and the current champion are scored on exactly those rows, each through its
own scorer (so a champion with other features or covariates is still compared fairly), and
the gates of :func:`training.registry.evaluate_gates` decide.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from features.contract import THERAPIST_ID
from models.pyfunc import load_scorer
from models.scorer import IncompatibleModelError, Scorer
from training.pipeline import ModelEvaluation, evaluate_scorer
from training.registry import (
    GateResult,
    PromotionResult,
    champion,
    evaluate_gates,
    promote,
    resolve_version,
)
from training.runlog import EVALUATION_DIR, TEST_CLIENTS, TEST_SESSIONS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionOutcome:
    """What ``promote_version`` decided and the evaluations it decided on."""

    name: str
    version: str
    previous_champion: str | None
    gate: GateResult | None
    result: PromotionResult | None
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    already_champion: bool = False


def evaluate_on(scorer: Scorer, sessions: pd.DataFrame, clients: pd.DataFrame, *, n_boot: int = 0,
                seed: int = 0) -> ModelEvaluation:  # fmt: skip
    """Evaluate ``scorer`` on the labelled landmarks of normalised ``sessions``/``clients``."""
    if sessions.empty:
        raise ValueError("no sessions to evaluate on")
    return evaluate_scorer(scorer, sessions, clients, n_boot=n_boot, seed=seed)


def gate_subgroups(evaluation: ModelEvaluation) -> pd.DataFrame:
    """Subgroups the gate judges: clinic, age band, gender, referral source and therapists."""
    therapists = evaluation.therapists.assign(subgroup=THERAPIST_ID)
    table = pd.concat([evaluation.subgroup_table(), therapists], ignore_index=True)
    return table[["subgroup", "value", "n", "ece"]]


def load_test_split(client: MlflowClient, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pseudonymised test tables a training run stored for its gates."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=EVALUATION_DIR, dst_path=tmp, tracking_uri=None
            )
        )
        return pd.read_parquet(local / TEST_SESSIONS), pd.read_parquet(local / TEST_CLIENTS)


def promote_version(
    name: str,
    version: str | None = None,
    *,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    client: MlflowClient | None = None,
) -> PromotionOutcome:
    """Gate ``name``/``version`` (default: latest) against the champion and move the alias.

    Raises
    ------
    ValueError
        ``force`` without a reason, or a candidate whose run stored no test split.
    IncompatibleModelError
        The candidate is not a loadable alliance-risk model.
    """
    client = client or MlflowClient()
    mv = resolve_version(client, name, version)
    current = champion(client, name)
    if current is not None and str(current.version) == str(mv.version):
        return PromotionOutcome(name, str(mv.version), str(current.version), None, None, {}, None,
                                already_champion=True)  # fmt: skip
    candidate = load_scorer(f"models:/{name}/{mv.version}")
    if not mv.run_id:
        raise ValueError(f"version {mv.version} has no training run, so no test split to gate on")
    sessions, clients = load_test_split(client, mv.run_id)
    cand_eval = evaluate_on(candidate, sessions, clients)
    cand_metrics = {k: float(cand_eval.model.overall[k]) for k in ("auroc", "ece", "brier")}
    champ_metrics = None
    if current is not None:
        try:
            champ_scorer = load_scorer(f"models:/{name}/{current.version}")
            champ_eval = evaluate_on(champ_scorer, sessions, clients)
            champ_metrics = {
                k: float(champ_eval.model.overall[k]) for k in ("auroc", "ece", "brier")
            }
        except IncompatibleModelError as exc:
            # A champion that cannot score the candidate's test rows (e.g. another instrument
            # profile) cannot be compared; the gate then judges the candidate on its own and
            # says so in the record.
            logger.warning("champion v%s cannot be compared: %s", current.version, exc)
    gate = evaluate_gates(cand_metrics, champ_metrics, gate_subgroups(cand_eval))
    result = promote(client, name, mv.version, gate=gate, force=force, reason=reason, actor=actor)
    return PromotionOutcome(
        name=name,
        version=str(mv.version),
        previous_champion=None if current is None else str(current.version),
        gate=gate,
        result=result,
        candidate_metrics=cand_metrics,
        champion_metrics=champ_metrics,
    )
