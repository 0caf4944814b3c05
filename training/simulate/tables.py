"""Assembling the contract tables from the slot loop's arrays, and writing them to files.

``sessions`` and ``clients`` in contract form, ``latent`` and ``ruptures`` with the generative
truth; :func:`write_cohort` adds the simulation marker that :func:`is_simulated` looks for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from features import contract as c
from features.profiles import InstrumentProfile
from training.simulate.config import Cohort, SimulationConfig
from training.simulate.intake import _decline
from training.simulate.paths import _OUTCOME_DROPOUT, _observed_outcome, _Paths

#: File written next to a simulated cohort's tables; training labels such models as simulated.
SIMULATION_MARKER = "simulation.json"
_CODES = np.array(c.ATTENDANCE_CODES, dtype=object)


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    width = max(width, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _to_scale(p: np.ndarray, profile: InstrumentProfile, step: float) -> np.ndarray:
    """Map p-scale values onto the instrument, clip, round to its recording step."""
    x = np.clip(p, 0.0, 1.0)
    x *= profile.scale_range / step
    np.round(x, out=x)
    x *= step
    x += profile.scale_min
    # Round again so 9.700000000000001 is written as 9.7.
    np.round(x, max(0, -math.floor(math.log10(step)) + 1), out=x)
    return np.clip(x, profile.scale_min, profile.scale_max, out=x)


def _str_col(values: np.ndarray) -> pd.Series:
    return pd.Series(values, dtype="str")


def _assemble(
    paths: _Paths, profile: InstrumentProfile, config: SimulationConfig, intercept: float
) -> Cohort:
    """Build the four frames from the slot loop's arrays, applying censoring at extraction."""
    st = paths.static
    n = st.planned.size
    start = np.datetime64(config.start_date, "D")
    extraction = config.enrolment_days + config.extraction_lag_days
    observed = _observed_outcome(paths, config)

    client_ids = _ids("C", n, 6)
    n_ther = st.therapist_alliance.size
    ther_ids = _ids("T", n_ther, 3)
    clinic_ids = np.array(config.clinic_ids, dtype=object)

    keep = np.flatnonzero(paths.row_day <= extraction)
    sel = keep[np.lexsort((paths.row_slot[keep], paths.row_client[keep]))]
    r_client = paths.row_client[sel]
    r_day = paths.row_day[sel]
    values = _to_scale(paths.row_ratings[sel], profile, config.rating_step(profile))

    sessions = pd.DataFrame(
        {
            c.CLIENT_ID: _str_col(client_ids[r_client]),
            c.CLINIC_ID: _str_col(clinic_ids[st.clinic[r_client]]),
            c.THERAPIST_ID: _str_col(ther_ids[st.therapist[r_client]]),
            c.SESSION_NUMBER: paths.row_slot[sel].astype(np.int64),
            c.SESSION_DATE: pd.Series(start + r_day.astype("timedelta64[D]")).astype(
                "datetime64[s]"
            ),
            c.ATTENDANCE: _str_col(_CODES[paths.row_code[sel]]),
        }
    )
    for j, col in enumerate(profile.columns):
        sessions[col] = values[:, j]

    outcome_codes = np.array([c.COMPLETED, c.DROPOUT, c.ONGOING], dtype=object)
    genders = np.array([g for g, _ in config.genders], dtype=object)
    referrals = np.array([r for r, _ in config.referral_sources], dtype=object)
    clients = pd.DataFrame(
        {
            c.CLIENT_ID: _str_col(client_ids),
            c.CLINIC_ID: _str_col(clinic_ids[st.clinic]),
            c.THERAPIST_ID: _str_col(ther_ids[st.therapist]),
            c.INTAKE_DATE: pd.Series(start + st.intake_day.astype("timedelta64[D]")).astype(
                "datetime64[s]"
            ),
            c.AGE: st.age.astype(np.int64),
            c.GENDER: _str_col(genders[st.gender]),
            c.REFERRAL_SOURCE: _str_col(referrals[st.referral]),
            c.OUTCOME: _str_col(outcome_codes[observed]),
        }
    )

    dropped = paths.outcome == _OUTCOME_DROPOUT
    rup = paths.ruptures
    rup_client = rup["client"]
    latent_cols: dict[str, object] = {
        c.CLIENT_ID: _str_col(client_ids),
        "therapist_alliance_effect": st.therapist_alliance[st.therapist],
        "therapist_dropout_effect": st.therapist_dropout[st.therapist],
        "alliance_level": st.level,
        "alliance_intake_mean": st.mean_pe.mean(axis=1),
        "alliance_growth": st.growth,
    }
    for j, e in enumerate(profile.element_names):
        latent_cols[f"element_dev_{e}"] = st.dev[:, j]
    for j, e in enumerate(profile.element_names):
        latent_cols[f"element_weight_{e}"] = np.full(n, st.weights[j])
    latent_cols.update(
        {
            "rating_noise_sd": st.noise_mult
            * math.hypot(config.session_noise_sd, config.element_noise_sd),
            "noshow_propensity": st.noshow,
            "planned_sessions": st.planned,
            "intake_logit": intercept + st.eta,
            "eventual_outcome": _str_col(outcome_codes[paths.outcome]),
            "dropout_session": pd.Series(paths.decision_slot, dtype="Int64").where(dropped),
            "terminal_misses": pd.Series(paths.terminal_misses, dtype="Int64").where(dropped),
            "last_attended_session": paths.last_attended,
            "declines": st.declines,
            "decline_onset": pd.Series(st.decline_onset, dtype="Int64").where(st.declines),
            "decline_rate": np.where(st.declines, st.decline_rate, np.nan),
            "decline_final": _decline(st, np.arange(n), paths.n_attended, config.decline_max),
            "n_ruptures": np.bincount(rup_client, minlength=n),
            "n_ruptures_repaired": np.bincount(rup_client[rup["repaired"]], minlength=n),
            "censored": observed == 2,
        }
    )
    latent = pd.DataFrame(latent_cols)

    element_names = np.array(profile.element_names, dtype=object)
    hit = rup["hit"]
    hit_names = ["|".join(element_names[h]) for h in hit]
    repaired_slot = rup["repaired_slot"]
    ruptures = pd.DataFrame(
        {
            c.CLIENT_ID: _str_col(client_ids[rup_client]),
            "onset_session": rup["slot"],
            "onset_attended_index": rup["attended_index"],
            "elements": pd.Series(hit_names, dtype="str"),
            "n_elements": hit.sum(axis=1).astype(np.int64),
            "depth_sd": rup["depth_sd"],
            "depth": rup["depth_sd"]
            * latent["rating_noise_sd"].to_numpy()[rup_client]
            * profile.scale_range,
            "repaired": rup["repaired"],
            "repair_lag_sessions": rup["lag"],
            "repaired_session": pd.Series(repaired_slot, dtype="Int64").where(repaired_slot > 0),
        }
    )
    ruptures = ruptures.sort_values([c.CLIENT_ID, "onset_session"], ignore_index=True)

    return Cohort(
        sessions=sessions,
        clients=clients,
        latent=latent,
        ruptures=ruptures,
        profile=profile,
        extraction_date=pd.Timestamp(config.extraction_date),
    )


def write_cohort(
    cohort: Cohort,
    out_dir: str | Path,
    *,
    fmt: Literal["csv", "parquet"] = "csv",
    with_latent: bool = False,
) -> dict[str, Path]:
    """Write the cohort's tables to ``out_dir`` (created if needed).

    Parameters
    ----------
    cohort : Cohort
        From :func:`simulate_cohort`.
    out_dir : str or Path
        Directory; existing files of the same names are overwritten.
    fmt : {"csv", "parquet"}
        CSV dates are written as ISO ``YYYY-MM-DD``.
    with_latent : bool
        Also write ``latent`` and ``ruptures`` (the generative truth, for oracle reports).

    Returns
    -------
    dict of str to Path
        Table name (``sessions``, ``clients``, and ``latent``, ``ruptures`` if asked) to file.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError("fmt must be 'csv' or 'parquet'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"sessions": cohort.sessions, "clients": cohort.clients}
    if with_latent:
        tables |= {"latent": cohort.latent, "ruptures": cohort.ruptures}
    written: dict[str, Path] = {}
    for name, frame in tables.items():
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False, date_format="%Y-%m-%d")
        else:
            frame.to_parquet(path, index=False)
        written[name] = path
    # Provenance marker: training reads it to label models trained on simulated data.
    marker = out / SIMULATION_MARKER
    marker.write_text(
        json.dumps(
            {
                "simulated": True,
                "profile": cohort.profile.name,
                "clients": int(len(cohort.clients)),
                "extraction_date": cohort.extraction_date.date().isoformat(),
            },
            indent=2,
        )
    )
    written["simulation"] = marker
    return written


def is_simulated(data_file: str | Path) -> bool:
    """Whether ``data_file`` sits in a folder written by :func:`write_cohort`."""
    return (Path(data_file).parent / SIMULATION_MARKER).is_file()
