"""Constants and frame helpers shared by the simulator tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import contract as c
from features.profiles import PROFILES
from training.simulate import Cohort

N_CLIENTS = 12_000
SEED = 2024
ALL_PROFILES = tuple(PROFILES)


def ended_episodes(cohort: Cohort) -> pd.DataFrame:
    return cohort.clients[cohort.clients[c.OUTCOME] != c.ONGOING]


def dropout_share(clients: pd.DataFrame) -> float:
    return float((clients[c.OUTCOME] == c.DROPOUT).mean())


def rated_sessions(cohort: Cohort) -> pd.DataFrame:
    """Attended, rated sessions with ``overall`` (mean of elements) and ``rated_index`` (0-based)."""
    cols = list(cohort.profile.columns)
    s = cohort.sessions
    rated = s[(s[c.ATTENDANCE] == c.ATTENDED) & s[cols].notna().all(axis=1)]
    return rated.assign(
        overall=rated[cols].mean(axis=1),
        rated_index=rated.groupby(c.CLIENT_ID).cumcount(),
    )


def cohens_d(values: pd.Series, outcome: pd.Series) -> float:
    """Pooled-SD Cohen's d, completers minus dropouts."""
    outcome = outcome.reindex(values.index)
    a = values[outcome == c.COMPLETED]
    b = values[outcome == c.DROPOUT]
    pooled = np.sqrt(((len(a) - 1) * a.var() + (len(b) - 1) * b.var()) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled)


def early_d(cohort: Cohort, column: str = "overall") -> float:
    """d of the mean of ``column`` over each client's first 3 rated sessions."""
    rated = rated_sessions(cohort)
    early = rated[rated["rated_index"] < 3].groupby(c.CLIENT_ID)[column].mean()
    return cohens_d(early, cohort.clients.set_index(c.CLIENT_ID)[c.OUTCOME])


def last_attended(cohort: Cohort) -> pd.Series:
    """Per client, the session_number of the last attended appointment (0 if none)."""
    s = cohort.sessions
    last = s[s[c.ATTENDANCE] == c.ATTENDED].groupby(c.CLIENT_ID)[c.SESSION_NUMBER].max()
    return last.reindex(cohort.clients[c.CLIENT_ID], fill_value=0)


def trailing_missed(cohort: Cohort) -> pd.Series:
    """Per client, how many appointments at the end of the record were no-show/late-cancel."""
    s = cohort.sessions
    missed = s[c.ATTENDANCE].isin(c.MISSED_CODES).to_numpy()
    # Count of consecutive missed rows ending at each row, reset by any other code.
    breaks = (~missed).cumsum()
    run = pd.Series(missed.astype(int)).groupby([s[c.CLIENT_ID].to_numpy(), breaks]).cumsum()
    return run.groupby(s[c.CLIENT_ID].to_numpy()).last()
