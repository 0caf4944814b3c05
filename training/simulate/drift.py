"""Drift scenarios applied to the recorded ratings (``SimulationConfig.rating_shift`` and
``instrument_change``).

Both change what the clinic records, not what happens: they are applied to the assembled
``sessions`` table, after every outcome is decided. The no-show scenario changes attendance and
so the course of the episodes; it lives at intake (:mod:`training.simulate.intake`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from features import contract as c
from features.profiles import get_profile
from training.simulate.config import Cohort, SimulationConfig


def _affected_rows(sessions: pd.DataFrame, config: SimulationConfig) -> np.ndarray:
    rows = np.ones(len(sessions), dtype=bool)
    if config.drift_clinic is not None:
        rows &= (sessions[c.CLINIC_ID] == config.drift_clinic).to_numpy()
    if config.drift_from is not None:
        rows &= (sessions[c.SESSION_DATE] >= pd.Timestamp(config.drift_from)).to_numpy()
    return rows


def apply_rating_drift(cohort: Cohort, config: SimulationConfig) -> Cohort:
    """``cohort`` with the rating shift and the instrument change of ``config`` applied to the
    sessions of the affected clinic and dates (the other frames are unchanged)."""
    if not (config.rating_shift or config.instrument_change):
        return cohort
    profile = cohort.profile
    rows = _affected_rows(cohort.sessions, config)
    sessions = cohort.sessions.copy()
    columns = list(profile.columns)
    if config.rating_shift:
        values = sessions.loc[rows, columns].to_numpy(dtype=np.float64) + config.rating_shift
        sessions.loc[rows, columns] = np.clip(values, profile.scale_min, profile.scale_max)
    if config.instrument_change:
        recorded = {e.focus for e in get_profile(config.instrument_change).elements}
        lost = [
            col for col, e in zip(columns, profile.elements, strict=True) if e.focus not in recorded
        ]
        sessions.loc[rows, lost] = np.nan
    return replace(cohort, sessions=sessions)
