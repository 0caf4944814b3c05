"""Where ruptures happened, session by session, by the features' own rule.

The rupture rule (a drop from the previous rated session of at least z x max(the client's own SD,
the floor); :mod:`features.kernels`) is computed once, in the feature code. The model only needs
counts, so the features count ruptures up to each landmark (``<element>_ruptures_1sd``); a
rupture happened at session k exactly when that count grows at landmark k. This module reads the
marks off those counts instead of writing the rule a second time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.build import build_features
from features.contract import CLIENT_ID, INTAKE_DATE, SESSION_NUMBER_MAX
from features.profiles import InstrumentProfile

#: The column family that counts 1-SD ruptures up to a landmark, per element.
RUPTURE_COUNT = "{group}_ruptures_1sd"


def rupture_sessions(
    sessions: pd.DataFrame, intake_date: pd.Timestamp, profile: InstrumentProfile
) -> dict[str, frozenset[int]]:
    """Session numbers of every rupture, per alliance element, for one client.

    Parameters
    ----------
    sessions
        One client's appointments in the data contract's columns (``client_id``,
        ``session_number``, ``session_date``, ``attendance``, ``alliance_<element>``).
    intake_date
        The episode's intake date.
    profile
        The instrument the ratings are on (the model's).

    Returns
    -------
    dict
        Element name -> the session numbers at which a rupture happened (empty when none).
    """
    if sessions.empty:
        return {e.name: frozenset() for e in profile.elements}
    client = sessions[CLIENT_ID].iloc[0]
    clients = pd.DataFrame({CLIENT_ID: [client], INTAKE_DATE: [pd.Timestamp(intake_date)]})
    frame = build_features(sessions, clients, profile=profile, landmarks="all",
                           k_max=SESSION_NUMBER_MAX)  # fmt: skip
    landmarks = frame.index.get_level_values("landmark").to_numpy()
    out = {}
    for element in profile.elements:
        counts = frame[RUPTURE_COUNT.format(group=element.name)].to_numpy()
        grew = np.diff(counts, prepend=0.0) > 0
        out[element.name] = frozenset(int(s) for s in landmarks[grew])
    return out
