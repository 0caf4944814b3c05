"""Promotion of a registered version to ``champion``, gated on the candidate's own test rows.

The candidate's training run stored its test split (pseudonymised) under ``evaluation/``.
Both the candidate and the current champion are scored on exactly those rows, each through its
own scorer (so a champion with other features or covariates is still compared fairly), and
the gates of :func:`training.registry.evaluate_gates` decide.

Shadow comparisons the service wrote while the candidate held the ``challenger`` alias
(:func:`summarise_shadow`) can be shown and recorded next to the gates. They inform and never
gate: they measure how far the candidate's scores are from the champion's on live requests, not
which is right (no outcomes are known yet, and a retrained model is meant to differ). Whether a
shift of the high band is acceptable (more or fewer clients prompted for outreach) is the
analyst's call; the gates judge accuracy and calibration on labelled rows.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from features.contract import THERAPIST_ID
from models.pyfunc import load_scorer
from models.scorer import IncompatibleModelError, Scorer
from training.evaluation import ModelEvaluation, evaluate_scorer
from training.registry import (
    TAG_SHADOW,
    GateResult,
    PromotionResult,
    champion,
    evaluate_gates,
    promote,
    resolve_version,
)
from training.runlog import EVALUATION_DIR, TEST_CLIENTS, TEST_SESSIONS

logger = logging.getLogger(__name__)


#: The band whose moves the shadow summary counts.
HIGH_BAND = "high"


@dataclass(frozen=True)
class ShadowEvidence:
    """Shadow comparisons of the candidate (as challenger) with the champion, for one model.

    ``comparisons``: lines comparing these two versions of ``model`` (a client scored twice is
    compared twice); ``first_at`` and ``last_at`` the time span of those comparisons (ISO 8601
    UTC, the service's scoring passes; None when there are none); ``mean_abs_difference`` and ``p95_abs_difference``
    of ``|p_champion - p_challenger|`` (probability units); ``band_agreement`` the share in the
    same band; ``into_high`` / ``out_of_high`` the shares the candidate would move into / out
    of the high band. The rates are NaN when there are no comparisons. ``other_lines`` counts
    lines of other models or versions (or unreadable ones), which are not summarised.
    """

    model: str
    champion_version: str | None
    challenger_version: str
    comparisons: int
    first_at: str | None
    last_at: str | None
    mean_abs_difference: float
    p95_abs_difference: float
    band_agreement: float
    into_high: float
    out_of_high: float
    other_lines: int
    files: tuple[str, ...]

    def to_json(self) -> str:
        """What ``promotion.shadow`` holds (NaN as null, file names without folders)."""
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v)
               for k, v in asdict(self).items()}  # fmt: skip
        out["files"] = [Path(f).name for f in self.files]
        return json.dumps(out, sort_keys=True)


def summarise_shadow(
    paths: Sequence[str | Path],
    *,
    model: str,
    challenger_version: str,
    champion_version: str | None,
) -> ShadowEvidence:
    """Summarise the service's shadow comparison files for one pair of versions of one model.

    Parameters
    ----------
    paths
        JSON-lines files written by the service (``ALLIANCE_RISK_SHADOW_LOG_PATH`` and its
        rotated ``.1``), one comparison per line with ``at``, ``model``, ``champion_version``,
        ``challenger_version``, ``p_champion``, ``p_challenger``, ``band_champion`` and
        ``band_challenger``.
    model
        The registered model: lines of another model (whose version numbers may be the same)
        are not summarised.
    challenger_version
        The candidate: only lines where it was the challenger are summarised.
    champion_version
        Only lines against this champion (None: against any).

    Raises
    ------
    OSError
        A file cannot be read.
    """
    p0: list[float] = []
    p1: list[float] = []
    b0: list[str] = []
    b1: list[str] = []
    at: list[datetime] = []
    other = 0
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                    if (
                        str(row["model"]) != model
                        or str(row["challenger_version"]) != challenger_version
                        or (
                            champion_version is not None
                            and str(row["champion_version"]) != champion_version
                        )
                    ):
                        other += 1
                        continue
                    pair = float(row["p_champion"]), float(row["p_challenger"])
                    bands = str(row["band_champion"]), str(row["band_challenger"])
                    when = datetime.fromisoformat(str(row["at"]))
                except (ValueError, KeyError, TypeError):
                    other += 1  # a torn last line, or not a comparison
                    continue
                p0.append(pair[0])
                p1.append(pair[1])
                b0.append(bands[0])
                b1.append(bands[1])
                at.append(when)
    n = len(p0)
    diff = np.abs(np.asarray(p0) - np.asarray(p1))
    was, now = np.asarray(b0, dtype=object), np.asarray(b1, dtype=object)
    nan = math.nan
    return ShadowEvidence(
        model=model,
        champion_version=champion_version,
        challenger_version=challenger_version,
        comparisons=n,
        first_at=min(at).isoformat() if at else None,
        last_at=max(at).isoformat() if at else None,
        mean_abs_difference=float(diff.mean()) if n else nan,
        p95_abs_difference=float(np.quantile(diff, 0.95)) if n else nan,
        band_agreement=float((was == now).mean()) if n else nan,
        into_high=float(((was != HIGH_BAND) & (now == HIGH_BAND)).mean()) if n else nan,
        out_of_high=float(((was == HIGH_BAND) & (now != HIGH_BAND)).mean()) if n else nan,
        other_lines=other,
        files=tuple(str(p) for p in paths),
    )


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
    shadow: ShadowEvidence | None = None


def evaluate_on(scorer: Scorer, sessions: pd.DataFrame, clients: pd.DataFrame, *, n_boot: int = 0,
                seed: int = 0, weighting: Scorer | None = None) -> ModelEvaluation:  # fmt: skip
    """Evaluate ``scorer`` on the labelled landmarks of normalised ``sessions``/``clients``.

    Weighted by the clients' inverse probability of censoring (every intake in ``clients``,
    ongoing included, gives the follow-up) unless the model (``weighting``, default
    ``scorer``: the champion is judged the candidate's way) was trained with
    ``--censoring exclude``, whose evaluation stays unweighted.
    """
    if sessions.empty:
        raise ValueError("no sessions to evaluate on")
    meta = (weighting or scorer).metadata
    censoring = "exclude" if meta.get("censoring") == "exclude" else "ipcw"
    return evaluate_scorer(scorer, sessions, clients, n_boot=n_boot, seed=seed,
                           censoring=censoring,
                           closure_days=int(meta.get("censoring_closure_days", 28)))  # fmt: skip


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
    shadow_logs: Sequence[str | Path] = (),
) -> PromotionOutcome:
    """Gate ``name``/``version`` (default: latest) against the champion and move the alias.

    ``shadow_logs``: the service's shadow comparison files; their summary for this candidate
    against the current champion (:func:`summarise_shadow`) is shown with the gates and recorded
    in ``promotion.shadow``, whatever the decision. It does not change the decision.

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
            champ_eval = evaluate_on(champ_scorer, sessions, clients, weighting=candidate)
            champ_metrics = {
                k: float(champ_eval.model.overall[k]) for k in ("auroc", "ece", "brier")
            }
        except IncompatibleModelError as exc:
            # A champion that cannot score the candidate's test rows (e.g. another instrument
            # profile) cannot be compared; the gate then judges the candidate on its own and
            # says so in the record.
            logger.warning("champion v%s cannot be compared: %s", current.version, exc)
    gate = evaluate_gates(
        cand_metrics, champ_metrics, gate_subgroups(cand_eval), bands=cand_eval.band_table()
    )
    shadow = None
    if shadow_logs:
        shadow = summarise_shadow(
            shadow_logs,
            model=name,
            challenger_version=str(mv.version),
            champion_version=None if current is None else str(current.version),
        )
    result = promote(client, name, mv.version, gate=gate, force=force, reason=reason, actor=actor,
                     evidence={TAG_SHADOW: shadow.to_json()} if shadow else None)  # fmt: skip
    return PromotionOutcome(
        name=name,
        version=str(mv.version),
        previous_champion=None if current is None else str(current.version),
        gate=gate,
        result=result,
        candidate_metrics=cand_metrics,
        champion_metrics=champ_metrics,
        shadow=shadow,
    )
