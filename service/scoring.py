"""From validated requests to scored, explained responses: the service's edge to ``models``.

Single clients go through :meth:`SessionArrays.single_client` (no pandas on the hot path);
batches are packed once with :meth:`SessionArrays.from_frames` and scored in one vectorised
pass. Both then use the same scorer and the same feature kernels as training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features import contract as c
from features.arrays import SessionArrays
from features.profiles import InstrumentProfile
from features.validation import (
    BEFORE_INTAKE,
    DATE_BACKWARDS,
    DUPLICATE_SESSION_NUMBER,
    RATING_NOT_ATTENDED,
    alliance_not_in_profile,
    rating_out_of_range,
)
from models.drivers import describe_drivers, group_label
from models.scorer import ScoreBatch
from service.model_store import LoadedModel
from service.schemas import RiskRequest

#: Raw per-feature contributions returned for audit.
TOP_FEATURES = 10
TOP_DRIVERS = 3

Problem = dict[str, Any]


def request_problems(
    req: RiskRequest, profile: InstrumentProfile, *, max_sessions: int | None = None
) -> list[Problem]:
    """Contract checks that need the model's profile or several fields at once, and the
    per-client appointment cap (``max_sessions``).

    Returns ``[{"loc": [...], "reason": ...}]`` with the data validator's wording; never a value.
    """
    problems: list[Problem] = []
    if max_sessions is not None and len(req.sessions) > max_sessions:
        reason = f"at most {max_sessions} appointments per client in one request"
        return [{"loc": ["sessions"], "reason": reason}]
    elements = set(profile.element_names)
    lo, hi = profile.scale_min, profile.scale_max
    seen: dict[int, int] = {}
    for i, s in enumerate(req.sessions):
        loc = ["sessions", i]
        if s.session_number in seen:
            problems.append({"loc": [*loc, "session_number"], "reason": DUPLICATE_SESSION_NUMBER})
        seen[s.session_number] = i
        if req.intake_date is not None and s.session_date < req.intake_date:
            problems.append({"loc": [*loc, "session_date"], "reason": BEFORE_INTAKE})
        for name, value in s.ratings.items():
            rloc = [*loc, "ratings", name]
            if name not in elements:
                problems.append({"loc": rloc, "reason": alliance_not_in_profile(profile)})
            elif value is None:
                continue
            elif not (math.isfinite(value) and lo <= value <= hi):  # np.isfinite: 1.4 us/call
                problems.append({"loc": rloc, "reason": rating_out_of_range(profile)})
            elif s.attendance != c.ATTENDED:
                problems.append({"loc": rloc, "reason": RATING_NOT_ATTENDED})
    order = sorted(seen.items())
    for (_, prev), (_, cur) in zip(order, order[1:], strict=False):
        if req.sessions[cur].session_date < req.sessions[prev].session_date:
            problems.append({"loc": ["sessions", cur, "session_date"], "reason": DATE_BACKWARDS})
    return problems


def _ratings_matrix(sessions: Sequence[Any], profile: InstrumentProfile) -> np.ndarray:
    names = profile.element_names  # a property that builds a tuple on every access
    out = np.full((len(names), len(sessions)), np.nan)
    for j, s in enumerate(sessions):
        for i, name in enumerate(names):
            v = s.ratings.get(name)
            if v is not None:
                out[i, j] = v
    return out


def single_arrays(req: RiskRequest, profile: InstrumentProfile) -> SessionArrays:
    """One client's history as arrays, without pandas."""
    s = req.sessions
    return SessionArrays.single_client(
        profile,
        session_number=[x.session_number for x in s],
        session_date=np.array([x.session_date for x in s], dtype="datetime64[D]"),
        attendance=[x.attendance for x in s],
        ratings=_ratings_matrix(s, profile),
        intake_date=None if req.intake_date is None else np.datetime64(req.intake_date, "D"),
        age=None if req.age is None else float(req.age),
        client_id=req.client_id,
    )


def batch_arrays(reqs: Sequence[RiskRequest], profile: InstrumentProfile) -> SessionArrays:
    """Many clients' histories packed in one pass. Segments are keyed by position in ``reqs``
    (``"0"``, ``"1"``, ...), so the same client_id twice in a batch stays two episodes."""
    keys, numbers, dates, attendance = [], [], [], []
    for k, r in enumerate(reqs):
        key = str(k)
        for s in r.sessions:
            keys.append(key)
            numbers.append(s.session_number)
            dates.append(s.session_date)
            attendance.append(s.attendance)
    all_sessions = [s for r in reqs for s in r.sessions]
    ratings = _ratings_matrix(all_sessions, profile)
    sessions = pd.DataFrame(
        {
            c.CLIENT_ID: keys,
            c.SESSION_NUMBER: np.asarray(numbers, dtype=np.int64),
            c.SESSION_DATE: np.asarray(dates, dtype="datetime64[D]").astype("datetime64[s]"),
            c.ATTENDANCE: attendance,
            **{col: ratings[i] for i, col in enumerate(profile.columns)},
        }
    )
    clients = pd.DataFrame(
        {
            c.CLIENT_ID: [str(k) for k in range(len(reqs))],
            c.INTAKE_DATE: np.asarray(
                [np.datetime64("NaT") if r.intake_date is None else r.intake_date for r in reqs],
                dtype="datetime64[D]",
            ).astype("datetime64[s]"),
            c.AGE: np.asarray([np.nan if r.age is None else r.age for r in reqs], dtype=float),
        }
    )
    return SessionArrays.from_frames(sessions, clients, profile)


def score(model: LoadedModel, arrays: SessionArrays) -> tuple[ScoreBatch, list[list[Any]]]:
    """Score every client of ``arrays`` at its latest appointment, with drivers."""
    scorer = model.scorer
    batch = scorer.score_arrays(arrays, landmarks="latest")
    assert batch.rows is not None
    drivers = describe_drivers(
        arrays, batch.rows, scorer.registry, batch.features, batch.explanation, top=TOP_DRIVERS
    )
    return batch, drivers


def model_ref(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version, "alias": model.alias}


def _float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def risk_payload(
    model: LoadedModel,
    batch: ScoreBatch,
    drivers: list[list[Any]],
    row: int,
    *,
    client_id: str,
    request_id: str,
    scored_at: datetime,
) -> dict[str, Any]:
    """The ``RiskResponse`` body of scored row ``row`` as JSON-ready Python objects."""
    e = batch.explanation
    profile = model.scorer.profile
    groups = e.group_contributions[row]
    feats = e.feature_contributions[row]
    top = np.argsort(-np.abs(feats), kind="stable")[:TOP_FEATURES]
    group_of = model.scorer.registry.group_of
    x = batch.features[row]
    return {
        "client_id": client_id,
        "landmark": int(batch.landmark[row]),
        "probability": float(e.probability[row]),
        "risk_band": str(batch.risk_band[row]),
        "model": model_ref(model),
        "scored_at": scored_at.isoformat(),
        "request_id": request_id,
        "explanation": {
            "space": e.space,
            "base_value": float(e.base_logit[row]),
            "base_probability": float(e.base_probability[row]),
            "output_value": float(e.logit[row]),
            "contributions": [
                {"group": g, "label": group_label(profile, g), "contribution": float(v)}
                for g, v in zip(e.group_names, groups, strict=True)
            ],
            "drivers": [
                {
                    "group": d.group,
                    "label": d.label,
                    "contribution": float(d.contribution),
                    "direction": d.direction,
                    "text": d.text,
                    "evidence": d.evidence,
                    "focus": d.focus,
                }
                for d in drivers[row]
            ],
            "features": [
                {
                    "feature": e.feature_names[j],
                    "group": group_of[e.feature_names[j]],
                    "value": _float(x[j]),
                    "contribution": float(feats[j]),
                }
                for j in top
            ],
        },
    }
