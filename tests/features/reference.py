"""A naive, readable reference implementation of every landmark feature.

It loops over clients and landmarks and recomputes each feature from that client's history with
plain Python, written from the feature definitions rather than from the vectorised kernel. The
tests use it as the correctness oracle; the benchmark uses it as the baseline.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from features.contract import ATTENDANCE_CODES
from features.profiles import OVERALL, InstrumentProfile
from features.registry import (
    RUPTURE_FLOOR_FRACTION,
    RUPTURE_MIN_HISTORY,
    YOUNG_AGE_YEARS,
    feature_registry,
)

NAN = float("nan")
TOL = 1e-9  # fraction of the scale range, as in the kernel


def _flag(x: bool) -> float:
    return 1.0 if x else 0.0


def _series_features(
    values: list[float], numbers: list[int], k: int, profile: InstrumentProfile
) -> dict[str, float]:
    """Features of one rating series: ``values`` of the rated sessions up to k, in order."""
    eps = TOL * profile.scale_range
    floor = RUPTURE_FLOOR_FRACTION * profile.scale_range
    m = len(values)
    f: dict[str, float] = {"n_rated": float(m)}
    if m == 0:
        for name in (
            "last",
            "last3_mean",
            "early_mean",
            "min",
            "slope",
            "change_first",
            "change_prev",
            "dev_own_mean",
            "sd",
            "mssd",
            "sessions_since_rupture",
        ):
            f[name] = NAN
        f.update(ruptures_1sd=0.0, ruptures_2sd=0.0, has_rupture=0.0, unrepaired=0.0)
        return f
    f["last"] = values[-1]
    f["last3_mean"] = statistics.fmean(values[-3:])
    early = [v for v, s in zip(values, numbers, strict=True) if s <= 3]
    f["early_mean"] = statistics.fmean(early) if early else NAN
    f["min"] = min(values)
    if m >= 2:
        xs = list(range(m))
        xbar, ybar = statistics.fmean(xs), statistics.fmean(values)
        f["slope"] = sum((x - xbar) * (y - ybar) for x, y in zip(xs, values, strict=True)) / sum(
            (x - xbar) ** 2 for x in xs
        )
        f["change_first"] = values[-1] - values[0]
        f["change_prev"] = values[-1] - values[-2]
        f["dev_own_mean"] = values[-1] - ybar
        f["sd"] = statistics.stdev(values)
        f["mssd"] = sum((b - a) ** 2 for a, b in zip(values, values[1:], strict=False)) / (m - 1)
    else:
        for name in ("slope", "change_first", "change_prev", "dev_own_mean", "sd", "mssd"):
            f[name] = NAN
    # Ruptures, session by session.
    n1 = n2 = 0
    last_rupture = None  # (position in values, level before the drop)
    for j in range(1, m):
        history = values[:j]
        if len(history) >= RUPTURE_MIN_HISTORY:
            base = max(statistics.stdev(history), floor)
        else:
            base = floor
        drop = values[j - 1] - values[j]
        if drop >= base - eps:
            n1 += 1
            last_rupture = (j, values[j - 1])
        if drop >= 2 * base - eps:
            n2 += 1
    f["ruptures_1sd"], f["ruptures_2sd"] = float(n1), float(n2)
    f["has_rupture"] = _flag(n1 > 0)
    if last_rupture is None:
        f["unrepaired"] = 0.0
        f["sessions_since_rupture"] = NAN
    else:
        j, level = last_rupture
        f["unrepaired"] = _flag(not any(v >= level - eps for v in values[j + 1 :]))
        f["sessions_since_rupture"] = float(k - numbers[j])
    return f


def reference_rated_values(
    attendance: list[str], ratings: list[list[float]], profile: InstrumentProfile
) -> list[list[float]]:
    """What each rating group counts at each appointment (the counterpart of
    :func:`features.kernels.rated_values`).

    ``ratings`` holds one list per element (profile order), one value per appointment. Returns
    one list per element and a last one for the element mean, one value per appointment: an
    element's rating if the appointment was attended and the rating is finite, else NaN; the
    mean of those rated at the appointment, added up in profile order, or NaN if none is.
    """
    n = len(attendance)
    rows: list[list[float]] = [[NAN] * n for _ in range(len(profile.elements) + 1)]
    for i in range(n):
        rated = []
        for e, series in enumerate(ratings):
            if attendance[i] == "attended" and math.isfinite(series[i]):
                rows[e][i] = series[i]
                rated.append(series[i])
        if rated:
            rows[-1][i] = sum(rated) / len(rated)
    return rows


def reference_client(
    history: dict[str, list],
    intake_day: float,
    age: float,
    k_index: int,
    profile: InstrumentProfile,
) -> dict[str, float]:
    """All features of one client at its ``k_index``-th appointment.

    ``history`` holds plain lists sorted by session number: ``session_number``, ``day`` (days
    since 1970-01-01), ``attendance`` and one list per rating column.
    """
    eps = TOL * profile.scale_range
    end = k_index + 1
    numbers = history["session_number"][:end]
    status = history["attendance"][:end]
    days = history["day"][:end]
    k = numbers[-1]
    out: dict[str, float] = {}

    per_session_mean: list[float] = []
    per_session_min: list[float] = []
    for name in (*profile.element_names, OVERALL):
        series, nums = [], []
        for i in range(end):
            if status[i] != "attended":
                continue
            if name == OVERALL:
                rated = [history[c][i] for c in profile.columns if not math.isnan(history[c][i])]
                if not rated:
                    continue
                value = sum(rated) / len(rated)
                per_session_mean.append(value)
                per_session_min.append(min(rated))
            else:
                value = history[f"alliance_{name}"][i]
                if math.isnan(value):
                    continue
            series.append(value)
            nums.append(numbers[i])
        feats = _series_features(series, nums, k, profile)
        n_el = len(profile.elements)
        if name == OVERALL:
            cutoff = profile.cutoff_total / (n_el if profile.total == "sum" else 1)
        else:
            cutoff = profile.element_cutoff
        feats["below_cutoff"] = _flag(series[-1] < cutoff - eps) if series else NAN
        for stat, v in feats.items():
            out[f"{name}_{stat}"] = v

    n_el = len(profile.elements)
    per_el = n_el if profile.total == "sum" else 1
    if per_session_mean:
        out[f"{OVERALL}_any_element_below_cutoff"] = _flag(
            per_session_min[-1] < profile.element_cutoff - eps
        )
    else:
        out[f"{OVERALL}_any_element_below_cutoff"] = NAN
    streak = 0
    for low in reversed(per_session_min):
        if low >= profile.scale_max - eps:
            streak += 1
        else:
            break
    out[f"{OVERALL}_ceiling_streak"] = float(streak)
    out[f"{OVERALL}_ceiling_flag"] = _flag(streak >= 2)
    if len(per_session_mean) >= 2:
        total_drop = (per_session_mean[-2] - per_session_mean[-1]) * per_el
        out[f"{OVERALL}_drop_alert"] = _flag(total_drop >= profile.drop_points - eps * per_el)
    else:
        out[f"{OVERALL}_drop_alert"] = NAN

    n = end
    for code in ATTENDANCE_CODES:
        count = sum(1 for s in status if s == code)
        out[f"attendance_{code}_count"] = float(count)
        out[f"attendance_{code}_rate"] = count / n
        out[f"attendance_last_{code}"] = _flag(status[-1] == code)
    out["attendance_no_show_first3"] = float(
        sum(1 for s, num in zip(status, numbers, strict=True) if s == "no_show" and num <= 3)
    )
    streak = 0
    for s in reversed(status):
        if s in ("no_show", "late_cancel"):
            streak += 1
        else:
            break
    out["attendance_missed_streak"] = float(streak)
    gaps = [b - a for a, b in zip(days, days[1:], strict=False)]
    out["attendance_gap_mean_days"] = statistics.fmean(gaps) if gaps else NAN
    out["attendance_gap_max_days"] = float(max(gaps)) if gaps else NAN

    attended_days = [d for d, s in zip(days, status, strict=True) if s == "attended"]
    out["engagement_landmark"] = float(k)
    out["engagement_days_since_intake"] = days[-1] - intake_day
    out["engagement_days_since_attended"] = (
        float(days[-1] - attended_days[-1]) if attended_days else NAN
    )
    out["engagement_never_attended"] = _flag(not attended_days)
    out["engagement_never_rated"] = _flag(not per_session_mean)
    out["engagement_unrated_share"] = (
        (len(attended_days) - len(per_session_mean)) / len(attended_days) if attended_days else NAN
    )
    out["client_age"] = age
    out["client_age_under_25"] = NAN if math.isnan(age) else _flag(age < YOUNG_AGE_YEARS)
    return out


def reference_features(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    *,
    profile: InstrumentProfile,
    landmarks: str | int = "all",
    k_max: int = 20,
    include_covariates: bool = False,
) -> pd.DataFrame:
    """The naive counterpart of :func:`features.build.build_features` (same index and columns)."""
    names = feature_registry(profile, include_covariates=include_covariates).names
    info = clients.set_index("client_id")
    index, rows = [], []
    for client_id, group in sessions.groupby("client_id", sort=True):
        group = group.sort_values("session_number")
        history: dict[str, list] = {
            "session_number": group["session_number"].astype(int).tolist(),
            "day": group["session_date"]
            .to_numpy()
            .astype("datetime64[D]")
            .astype(np.int64)
            .tolist(),
            "attendance": group["attendance"].tolist(),
            **{c: group[c].astype(float).tolist() for c in profile.columns},
        }
        intake = info.loc[client_id, "intake_date"]
        intake_day = NAN if pd.isna(intake) else float(np.datetime64(intake, "D").astype(np.int64))
        age = float(info.loc[client_id, "age"]) if "age" in info.columns else NAN
        numbers = history["session_number"]
        for i, k in enumerate(numbers):
            last = i == len(numbers) - 1
            if landmarks == "latest":
                keep = last
            elif landmarks in ("all", "training"):
                # Training is what serving sees: an ended episode's last appointment included.
                keep = k <= k_max
            else:
                keep = k == landmarks
            if keep:
                feats = reference_client(history, intake_day, age, i, profile)
                index.append((client_id, k))
                rows.append([feats[name] for name in names])
    frame = pd.DataFrame(
        np.array(rows, dtype=np.float64).reshape(len(rows), len(names)),
        index=pd.MultiIndex.from_tuples(index, names=["client_id", "landmark"]),
        columns=list(names),
    )
    return frame
