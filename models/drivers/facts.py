"""What a driver's sentence may quote, for every chosen (row, group) pair at once.

One vectorised pass serves one row and a million. The statistics come from the feature row
``X`` (the registry is the one definition of every feature); the history supplies what a sentence
quotes and no feature holds: which rated sessions, at which session number, with which values.
Rated values come from :func:`features.kernels.rated_values`, the features' own definition of a
rated session and of the element mean, so a quoted number is the one the features were built on.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from features.arrays import MAX_SESSION_NUMBER, SessionArrays
from features.contract import ATTENDANCE_CODES, ATTENDED, LATE_CANCEL, NO_SHOW
from features.kernels import rated_values
from models.drivers.tables import ACTIVITY_FEATURES, RATING_STATS, RATING_VALUE_STATS, Tables

#: Rated sessions quoted by "over the last N rated sessions" sentences.
RECENT_RATED = 3
#: Appointments quoted by "in the last N appointments" sentences.
RECENT_APPOINTMENTS = 3

ATTENDED_CODE = ATTENDANCE_CODES.index(ATTENDED)
_NO_SHOW = ATTENDANCE_CODES.index(NO_SHOW)
_LATE = ATTENDANCE_CODES.index(LATE_CANCEL)
#: Rated values counted back from the latest (1 = the latest), as a column.
_BACK = np.arange(1, RECENT_RATED + 2, dtype=np.int64)[:, None]
_SINCE_RUPTURE = RATING_STATS.index("sessions_since_rupture")
#: Appointments counted back from the landmark (0 = the landmark), as a column.
_RECENT = np.arange(RECENT_APPOINTMENTS, dtype=np.int64)[:, None]


class RatingFacts(NamedTuple):
    """What the sentences of a rating-group pair may quote, on the display scale."""

    m: int  # rated sessions up to the landmark
    sn_now: int  # session number of the landmark
    sn0: int  # session number 0, 1, ... rated sessions back (-1 if fewer)
    sn1: int
    sn2: int
    sn3: int
    first_sn: int  # session number of the first rated session (-1 if none)
    rup_sn: int  # session of the latest rupture (-1 if none)
    low_el: int  # overall only: element lowest at the last rated session (-1)
    focus_el: int  # overall only: element with the lowest latest rating (-1)
    v0: float  # value 0, 1, ... rated sessions back (NaN if fewer)
    v1: float
    v2: float
    v3: float
    first: float  # first rated value
    spread: float  # max - min of the last RECENT_RATED values
    rup_before: float  # rated value before the rupture and at it
    rup_at: float
    low_val: float  # value of low_el
    # The feature row's RATING_STATS, in that order (a test holds them equal).
    last3_mean: float
    early_mean: float
    min: float
    slope: float
    change_first: float
    change_prev: float
    dev_own_mean: float
    sd: float
    ruptures_1sd: float
    has_rupture: float
    unrepaired: float
    sessions_since_rupture: float
    below_cutoff: float
    any_element_below_cutoff: float
    ceiling_streak: float
    drop_alert: float


class ActivityFacts(NamedTuple):
    """What the sentences of an attendance, engagement or client pair may quote."""

    k: int  # appointments up to the landmark
    sn_now: int
    code_now: int  # attendance code of the landmark
    w_no_show: int  # no-shows and late cancellations in the last RECENT_APPOINTMENTS
    w_late: int
    # The feature row's ACTIVITY_FEATURES, in that order (a test holds them equal).
    attendance_attended_count: float
    attendance_no_show_count: float
    attendance_late_cancel_count: float
    attendance_cancelled_count: float
    attendance_rescheduled_count: float
    attendance_no_show_first3: float
    attendance_missed_streak: float
    attendance_gap_mean_days: float
    attendance_gap_max_days: float
    engagement_days_since_intake: float
    engagement_days_since_attended: float
    engagement_never_attended: float
    engagement_never_rated: float
    engagement_unrated_share: float
    client_age: float


Facts = RatingFacts | ActivityFacts


def pair_facts(
    arrays: SessionArrays,
    rows: np.ndarray,
    X: np.ndarray,
    pair_row: np.ndarray,
    pair_group: np.ndarray,
    tables: Tables,
) -> list[Facts]:
    """The facts of each (scored row ``pair_row``, group ``pair_group``) pair, in pair order.

    ``rows`` are the scored rows' landmark rows in ``arrays`` and ``X`` their feature rows.
    """
    slot = tables.group_slot[pair_group]
    is_rating = slot >= 0
    sel_r, sel_a = np.flatnonzero(is_rating), np.flatnonzero(~is_rating)
    got: list[Facts] = []
    if sel_r.shape[0]:
        xrow = pair_row[sel_r]
        scale = tables.group_scale[pair_group[sel_r]]
        got += _rating_facts(arrays, rows[xrow], X, xrow, slot[sel_r], scale, tables)
    if sel_a.shape[0]:
        xrow = pair_row[sel_a]
        got += _activity_facts(arrays, rows[xrow], X, xrow, tables)
    # ``got`` holds the rating pairs' facts, then the others': back to pair order.
    back = np.empty(pair_row.shape[0], dtype=np.int64)
    back[np.concatenate([sel_r, sel_a])] = np.arange(pair_row.shape[0])
    return [got[p] for p in back.tolist()]


def _gather(X: np.ndarray, xrow: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(k, n_pairs)``: feature ``cols[j]`` (``(k, 1)``, or ``(k, n_pairs)`` per pair) of each
    pair's row ``xrow``, NaN where the column is -1 (absent from the registry)."""
    out = X[xrow, cols]
    np.copyto(out, np.nan, where=cols < 0)
    return out


def _rating_facts(
    arrays: SessionArrays,
    at: np.ndarray,
    X: np.ndarray,
    xrow: np.ndarray,
    slot: np.ndarray,
    scale: np.ndarray,
    tables: Tables,
) -> list[RatingFacts]:
    """Facts of rating-group pairs: landmark row ``at``, feature row ``xrow``, rating ``slot``."""
    n_el = len(arrays.profile.elements)
    n = arrays.n_rows
    sn = arrays.session_number
    values = rated_values(arrays)  # (n_el + 1, n): NaN where not rated
    # Positions in the flattened (slot, row) values count the rated values before them, so the
    # k-th rated value of a slot in a client is one look-up, however long the history; the row
    # of a position is the position modulo n.
    flat = values.ravel()
    rated = ~np.isnan(flat)
    csum = np.zeros(flat.shape[0] + 1, dtype=np.int64)
    np.cumsum(rated, out=csum[1:])
    pos = np.flatnonzero(rated)
    if pos.shape[0] == 0:
        pos = np.zeros(1, dtype=np.int64)  # every count is 0 below, so it is never read

    seg = arrays.seg_of_row[at]
    base = slot * n
    c_start, c_end = csum[base + arrays.offsets[seg]], csum[base + at + 1]
    # The rated values 0, 1, ... RECENT_RATED back, then the first one.
    wanted = np.concatenate([c_end - _BACK, c_start[None]])
    valid = (wanted >= c_start) & (wanted < c_end)
    fp = pos[np.where(valid, wanted, 0)]
    got_v = np.where(valid, flat[fp], np.nan) * scale
    got_sn = np.where(valid, sn[fp % n], -1)
    spread = np.fmax.reduce(got_v[:RECENT_RATED], axis=0)
    spread -= np.fmin.reduce(got_v[:RECENT_RATED], axis=0)

    stats = _gather(X, xrow, tables.rating_stat_cols[slot].T)
    stats[: len(RATING_VALUE_STATS)] *= scale

    # The rupture: its row from the session number the feature row gives, then the rated value
    # before it (the level it dropped from) and the value at it.
    since = stats[_SINCE_RUPTURE]
    has = ~np.isnan(since)
    rup_sn = sn[at] - np.where(has, since, 0.0).astype(np.int64)
    key = arrays.seg_of_row * (MAX_SESSION_NUMBER + 1) + sn
    rup_key = seg * (MAX_SESSION_NUMBER + 1) + rup_sn
    rup_fp = base + np.minimum(np.searchsorted(key, rup_key), n - 1)
    has &= (key[rup_fp % n] == rup_key) & rated[rup_fp]
    has &= csum[rup_fp] > c_start  # a rated value before it, in the same client and group
    before = np.where(has, flat[pos[np.maximum(csum[rup_fp] - 1, 0)]], np.nan) * scale
    at_rup = np.where(has, flat[rup_fp], np.nan) * scale

    # Overall alliance only: the lowest element at its last rated session, and the element
    # with the lowest latest rating (whose strategy becomes the focus).
    overall = (slot == n_el) & (c_end > c_start)
    el_values = values[:n_el, fp[0] % n]
    el_values[np.isnan(el_values)] = np.inf
    low_el = np.where(overall, el_values.argmin(axis=0), -1)
    low_val = np.where(overall, el_values.min(axis=0), np.nan)
    el_last = _gather(X, xrow, tables.element_last_cols[:, None])
    el_last[np.isnan(el_last)] = np.inf
    any_last = (slot == n_el) & (el_last < np.inf).any(axis=0)
    focus_el = np.where(any_last, el_last.argmin(axis=0), -1)

    columns = [
        c_end - c_start,
        sn[at],
        *got_sn,
        np.where(has, rup_sn, -1),
        low_el,
        focus_el,
        *got_v,
        spread,
        before,
        at_rup,
        low_val,
        *stats,
    ]
    return list(map(RatingFacts._make, zip(*(c.tolist() for c in columns), strict=True)))


def _activity_facts(
    arrays: SessionArrays, at: np.ndarray, X: np.ndarray, xrow: np.ndarray, tables: Tables
) -> list[ActivityFacts]:
    """Facts of attendance, engagement and client pairs at landmark rows ``at``."""
    att = arrays.attendance
    rank = arrays.rank[at]
    window = np.where(rank >= _RECENT, att[np.maximum(at - _RECENT, 0)], -1)
    stats = _gather(X, xrow, tables.activity_cols[:, None])
    age = ACTIVITY_FEATURES.index("client_age")
    if tables.activity_cols[age] < 0:  # not a model input, but known
        stats[age] = arrays.age[arrays.seg_of_row[at]]
    columns = [
        rank + 1,
        arrays.session_number[at],
        att[at],
        (window == _NO_SHOW).sum(axis=0),
        (window == _LATE).sum(axis=0),
        *stats,
    ]
    return list(map(ActivityFacts._make, zip(*(c.tolist() for c in columns), strict=True)))
