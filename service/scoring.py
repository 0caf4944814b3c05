"""From validated requests to scored, explained responses: the service's edge to ``models``.

Single clients go through :meth:`SessionArrays.single_client` (no pandas on the hot path);
batches are packed once with :meth:`SessionArrays.from_frames` and scored in one vectorised
pass. Both then use the same scorer and the same feature kernels as training.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from features import contract as c
from features.arrays import SessionArrays, ratings_matrix
from features.profiles import InstrumentProfile
from features.validation import (
    BEFORE_INTAKE,
    DATE_BACKWARDS,
    DUPLICATE_SESSION_NUMBER,
    RATING_NOT_ATTENDED,
    alliance_not_in_profile,
    rating_out_of_range,
)
from models.drivers import Driver, describe_drivers, group_label
from models.explain import Explanation
from models.scorer import ScoreBatch, Scorer
from service.model_store import LoadedModel
from service.schemas import Appointment, Episode

#: Raw per-feature contributions returned for audit.
TOP_FEATURES = 10
TOP_DRIVERS = 3

Problem = dict[str, Any]


def request_problems(
    req: Episode, profile: InstrumentProfile, *, max_sessions: int | None = None
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
    sessions: Sequence[Appointment] = req.sessions
    # Locations are built only for a problem found: on a valid request (the usual case) this
    # loop allocates nothing per rating.
    for i, s in enumerate(sessions):
        if s.session_number in seen:
            problems.append(
                {"loc": ["sessions", i, "session_number"], "reason": DUPLICATE_SESSION_NUMBER}
            )
        seen[s.session_number] = i
        if req.intake_date is not None and s.session_date < req.intake_date:
            problems.append({"loc": ["sessions", i, "session_date"], "reason": BEFORE_INTAKE})
        attended = s.attendance == c.ATTENDED
        for name, value in s.ratings.items():
            if name not in elements:
                reason = alliance_not_in_profile(profile)
            elif value is None:
                continue
            elif not (math.isfinite(value) and lo <= value <= hi):  # np.isfinite: 1.4 us/call
                reason = rating_out_of_range(profile)
            elif not attended:
                reason = RATING_NOT_ATTENDED
            else:
                continue
            problems.append({"loc": ["sessions", i, "ratings", name], "reason": reason})
    order = sorted(seen.items())
    for (_, prev), (_, cur) in zip(order, order[1:], strict=False):
        if sessions[cur].session_date < sessions[prev].session_date:
            problems.append({"loc": ["sessions", cur, "session_date"], "reason": DATE_BACKWARDS})
    return problems


def single_arrays(req: Episode, profile: InstrumentProfile) -> SessionArrays:
    """One client's history as arrays, without pandas."""
    s = req.sessions
    return SessionArrays.single_client(
        profile,
        session_number=[x.session_number for x in s],
        # Day numbers from date.toordinal(): numpy converting date objects costs 6x as much.
        session_date=(
            np.array([x.session_date.toordinal() for x in s], dtype=np.int64) - _EPOCH_ORDINAL
        ).astype("datetime64[D]"),
        attendance=[x.attendance for x in s],
        ratings=ratings_matrix([x.ratings for x in s], profile)[0],
        intake_date=None if req.intake_date is None else np.datetime64(req.intake_date, "D"),
        age=None if req.age is None else float(req.age),
        client_id=req.client_id,
    )


#: ``date.toordinal()`` of 1970-01-01: ordinals minus this are days since the epoch.
_EPOCH_ORDINAL = 719163
_ATTENDANCE_CODE = {code: i for i, code in enumerate(c.ATTENDANCE_CODES)}


@dataclass(frozen=True)
class PackedBatch:
    """A batch after its contract checks: the clients that passed, packed as arrays.

    ``arrays`` holds client ``j`` = ``reqs[valid[j]]`` (None when no client passed);
    ``problems`` maps the position of each refused client to its problems.
    """

    arrays: SessionArrays | None
    valid: list[int]
    problems: dict[int, list[Problem]]


def check_and_pack(
    reqs: Sequence[Episode], profile: InstrumentProfile, *, max_sessions: int | None = None
) -> PackedBatch:
    """:func:`request_problems` for many clients at once, and the passing ones packed.

    The checks run vectorised over the flat appointment arrays; only clients they flag go
    through the per-client checks, which word the problems. Same outcome as calling
    :func:`request_problems` on every client (a test holds them equal), several times faster.
    """
    n = len(reqs)
    nan = float("nan")
    # Column by column with comprehensions: about twice as fast as one loop appending to many
    # lists.
    sessions = [s for r in reqs for s in r.sessions]
    cl = np.repeat(np.arange(n, dtype=np.int64), [len(r.sessions) for r in reqs])
    sn = np.asarray([s.session_number for s in sessions], dtype=np.int64)
    day = np.asarray([s.session_date.toordinal() for s in sessions], dtype=np.int64)
    day -= _EPOCH_ORDINAL
    code = _ATTENDANCE_CODE
    att = np.asarray([code[s.attendance] for s in sessions], dtype=np.int8)
    ratings, keys = ratings_matrix([s.ratings for s in sessions], profile)
    intake = np.asarray(
        [nan if r.intake_date is None else r.intake_date.toordinal() - _EPOCH_ORDINAL
         for r in reqs], dtype=np.float64,
    )  # fmt: skip

    # Rows that break a rule; a client with any such row is re-checked one by one.
    present = ~np.isnan(ratings)
    matched = present.sum(axis=0)
    with np.errstate(invalid="ignore"):
        out_of_scale = present & ~((ratings >= profile.scale_min) & (ratings <= profile.scale_max))
    bad_row = out_of_scale.any(axis=0)
    bad_row |= present.any(axis=0) & (att != _ATTENDANCE_CODE[c.ATTENDED])
    # More keys than named elements present means an unknown element (or a null for a known
    # one, which is harmless but cheap to re-check).
    bad_row |= keys > matched
    bad_row |= day < intake[cl]  # NaN intake compares False
    order = np.lexsort((sn, cl))
    same = cl[order][1:] == cl[order][:-1]
    clash = same & ((sn[order][1:] == sn[order][:-1]) | (day[order][1:] < day[order][:-1]))
    bad_row[order[1:][clash]] = True
    flagged = np.zeros(n, dtype=bool)
    flagged[cl[bad_row]] = True
    if max_sessions is not None:
        flagged |= np.bincount(cl, minlength=n) > max_sessions

    problems: dict[int, list[Problem]] = {}
    for k in np.flatnonzero(flagged).tolist():
        found = request_problems(reqs[k], profile, max_sessions=max_sessions)
        if found:
            problems[k] = found
    valid = [k for k in range(n) if k not in problems]
    if not valid:
        return PackedBatch(None, [], problems)
    keep_client = np.zeros(n, dtype=bool)
    keep_client[valid] = True
    new_index = np.cumsum(keep_client) - 1
    rows = keep_client[cl]
    age = np.asarray([nan if r.age is None else r.age for r in reqs], dtype=np.float64)
    arrays = SessionArrays.from_episodes(
        profile,
        client=new_index[cl[rows]],
        session_number=sn[rows],
        day=day[rows],
        attendance=att[rows],
        ratings=ratings[:, rows],
        intake_day=intake[keep_client],
        age=age[keep_client],
    )
    return PackedBatch(arrays, valid, problems)


def score(model: LoadedModel, arrays: SessionArrays) -> tuple[ScoreBatch, list[list[Driver]]]:
    """Score every client of ``arrays`` at its latest appointment, with drivers."""
    scorer = model.scorer
    batch = scorer.score_arrays(arrays, landmarks="latest")
    assert batch.rows is not None
    drivers = describe_drivers(
        arrays, batch.rows, scorer.registry, batch.features, batch.explanation, top=TOP_DRIVERS
    )
    return batch, drivers


@dataclass(frozen=True, eq=False)
class _Names:
    """Per-model strings of the response, made once per model rather than per request."""

    group_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    labels: tuple[str, ...]  # clinician names of the groups
    feature_array: np.ndarray  # feature_names as an object array, for fancy indexing


#: Keyed by the scorer (weakly: a replaced model's entry goes with it).
_NAMES: weakref.WeakKeyDictionary[Scorer, _Names] = weakref.WeakKeyDictionary()


def _names(scorer: Scorer, e: Explanation) -> _Names:
    # Identity checks: a scorer's explanations share its grouping's tuples (hashing the
    # profile, or converting 148 names, cost ~10 us per request).
    cached = _NAMES.get(scorer)
    if cached is None or not (
        cached.group_names is e.group_names and cached.feature_names is e.feature_names
    ):
        cached = _Names(
            group_names=e.group_names,
            feature_names=e.feature_names,
            labels=tuple(group_label(scorer.profile, g) for g in e.group_names),
            feature_array=np.asarray(e.feature_names, dtype=object),
        )
        _NAMES[scorer] = cached
    return cached


def model_ref(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version, "alias": model.alias}


def risk_payloads(
    model: LoadedModel,
    batch: ScoreBatch,
    drivers: list[list[Driver]],
    *,
    client_ids: Sequence[str],
    request_id: str,
    scored_at: datetime,
) -> list[dict[str, Any]]:
    """``RiskResponse`` bodies of every scored row, in row order, as JSON-ready objects.

    Arrays are converted to Python lists once per batch (not per value): this is what keeps
    1,000-client batches in tens of milliseconds.
    """
    e = batch.explanation
    strings = _names(model.scorer, e)
    n = batch.n_rows
    ref = model_ref(model)
    when = scored_at.isoformat()
    group_names = list(e.group_names)
    labels = strings.labels
    fc = e.feature_contributions
    k = min(TOP_FEATURES, fc.shape[1])
    top = np.argsort(-np.abs(fc), axis=1, kind="stable")[:, :k]
    # Plain fancy indexing: np.take_along_axis builds the same index with ~10 us of Python.
    at = np.arange(n)[:, None]
    top_contrib = fc[at, top].tolist()
    top_value = batch.features[at, top]
    top_value_list = np.where(np.isfinite(top_value), top_value, np.nan).tolist()
    names = strings.feature_array
    group_of = model.scorer.registry.group_of
    top_names = names[top].tolist()
    groups = e.group_contributions.tolist()
    probability = e.probability.tolist()
    base_value, base_p, output = (
        e.base_logit.tolist(),
        e.base_probability.tolist(),
        e.logit.tolist(),
    )
    landmark = batch.landmark.tolist()
    band = [str(b) for b in batch.risk_band]
    out = []
    for i in range(n):
        out.append(
            {
                "client_id": client_ids[i],
                "landmark": landmark[i],
                "probability": probability[i],
                "risk_band": band[i],
                "model": ref,
                "scored_at": when,
                "request_id": request_id,
                "explanation": {
                    "space": e.space,
                    "base_value": base_value[i],
                    "base_probability": base_p[i],
                    "output_value": output[i],
                    "contributions": [
                        {"group": g, "label": lab, "contribution": v}
                        for g, lab, v in zip(group_names, labels, groups[i], strict=True)
                    ],
                    "drivers": [
                        {
                            "group": d.group,
                            "label": d.label,
                            "contribution": d.contribution,
                            "direction": d.direction,
                            "text": d.text,
                            "evidence": d.evidence,
                            "focus": d.focus,
                        }
                        for d in drivers[i]
                    ],
                    "features": [
                        {
                            "feature": f,
                            "group": group_of[f],
                            "value": None if v != v else v,  # NaN (undefined) -> null
                            "contribution": c,
                        }
                        for f, v, c in zip(
                            top_names[i], top_value_list[i], top_contrib[i], strict=True
                        )  # fmt: skip
                    ],
                },
            }
        )
    return out
