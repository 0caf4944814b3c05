"""The numpy feature kernel: every landmark feature as an expanding, per-client statistic.

Each session row is a landmark: its features are computed from the rows at or before it in the
same client segment, which makes them leakage-free by construction. The work is segmented numpy
with no per-client Python loop: the only Python loops run over a handful of elements and over
runs of equal-length segments (:attr:`SessionArrays.runs`). Every statistic is computed at every
history row into one table (:attr:`FeatureRegistry.statistics_table`: a row per statistic and
rating group or attendance code), and the landmark rows are picked from it into the registry's
columns. The same code computes one client for the API and 100,000 for training; a batch goes
through it in chunks of clients of about :data:`CHUNK_ROWS` rows, which bounds its memory.

What counts as a rated session, and the element mean, are defined once: :func:`rated_values`.

Exactness. Prefix sums are computed inside each segment (equal-length segments are reshaped to
``(n_clients, length)`` blocks and accumulated along the last axis), never as one global cumsum
minus offsets: a global float cumsum carries other clients' rounding into every client, and a
mean of 9.0 could come out as 8.999999999 and flip a cut-off rule. With segment-local sums, a
client's features are bit-identical whether it is computed alone (serving) or in a batch of
100,000 (training). Ratings are centred on the client's first rating before sums of squares,
so a constant series has an SD of exactly 0. Cut-off comparisons tolerate
:data:`TOLERANCE_FRACTION` of the scale range, so that decimal ratings such as 8.7 - 8.2
(= 0.4999999999999991 in binary) meet a 0.5 threshold.
"""

from __future__ import annotations

import numpy as np

from features.arrays import SessionArrays
from features.contract import ATTENDANCE_CODES, ATTENDED, LATE_CANCEL, NO_SHOW
from features.registry import (
    RUPTURE_FLOOR_FRACTION,
    RUPTURE_MIN_HISTORY,
    YOUNG_AGE_YEARS,
    FeatureRegistry,
    StatisticsTable,
)

__all__ = ["CHUNK_ROWS", "TOLERANCE_FRACTION", "compute_feature_matrix", "rated_values"]

#: Batches are computed in chunks of clients with about this many history rows (or one client,
#: if longer): each chunk depends only on its own clients' rows. A chunk's buffers (the table, a
#: float64 row per statistic by CHUNK_ROWS, and its temporaries) set a scoring request's peak
#: memory: a 1,000-client API batch (12,000 rows) peaked 42 MB above its start with 16,384-row
#: chunks and 15 MB with 4,096, at the same speed (also on 30,000 clients, all landmarks).
CHUNK_ROWS = 1 << 12
#: Comparisons with cut-offs tolerate this fraction of the scale range.
TOLERANCE_FRACTION = 1e-9

_ATT = ATTENDANCE_CODES.index(ATTENDED)
_NO_SHOW = ATTENDANCE_CODES.index(NO_SHOW)
_LATE = ATTENDANCE_CODES.index(LATE_CANCEL)
_N_CODES = len(ATTENDANCE_CODES)
_CODES = np.arange(_N_CODES, dtype=np.int8)[:, None]
#: Per attendance code: [not missed (neither no-show nor late cancellation), attended].
_NOT_MISSED_ATTENDED = np.array(
    [[i not in (_NO_SHOW, _LATE) for i in range(_N_CODES)], [i == _ATT for i in range(_N_CODES)]]
)
#: Thresholds on rated sessions so far below which a statistic is undefined (1 and 2 sessions).
_BELOW = np.array([0.0, 1.0])[:, None, None]


def rated_values(arrays: SessionArrays) -> np.ndarray:
    """The value of every rating group at every appointment, NaN where it is not rated.

    The definitions of *rated session* and *element mean* (:mod:`features.registry`) in code:
    every alliance feature is computed from these values.

    Parameters
    ----------
    arrays
        Session arrays (any segment order: each column depends only on its own appointment).

    Returns
    -------
    numpy.ndarray
        ``(n_elements + 1, n_rows)`` float64. Row ``g < n_elements``: element ``g``'s rating
        (``profile.element_names`` order) where the appointment was attended and the rating
        is finite, else NaN. Last row: the element mean, the sum of the rated elements in
        profile order divided by their number, where at least one is rated, else NaN.
    """
    r = arrays.ratings
    n_el = r.shape[0]
    out = np.full((n_el + 1, r.shape[1]), np.nan)
    rated = np.isfinite(r)  # inf counts as not rated
    rated &= arrays.attendance == _ATT
    np.copyto(out[:n_el], r, where=rated)
    # [0] ratings with 0.0 where unrated, [1] rated (0/1), accumulated over the elements: an
    # accumulation adds the elements one after another in profile order, alone and in a batch.
    layers = np.zeros((n_el, 2, r.shape[1]))
    np.copyto(layers[:, 0], r, where=rated)
    layers[:, 1] = rated
    total, n_rated = np.add.accumulate(layers, axis=0)[-1]
    np.divide(total, n_rated, out=out[n_el], where=n_rated > 0.0)
    return out


def compute_feature_matrix(
    arrays: SessionArrays, registry: FeatureRegistry, rows: np.ndarray | None = None
) -> np.ndarray:
    """Features at the landmark rows ``rows`` of ``arrays``, columns in ``registry`` order.

    Parameters
    ----------
    arrays
        Sorted session arrays (:meth:`features.episodes.Episodes.pack`, or
        :func:`features.build.pack_frames` for tables).
    registry
        Feature registry for ``arrays.profile`` (:func:`features.registry.feature_registry`).
    rows
        Row positions in ``arrays`` to return, any order (each row is the landmark at its
        appointment); default every row.

    Returns
    -------
    numpy.ndarray
        ``(len(rows), len(registry.features))`` float64, Fortran order (columns contiguous),
        NaN where a feature is undefined by design, never inf.
    """
    profile = registry.profile
    if profile is not arrays.profile and profile != arrays.profile:
        raise ValueError("registry and session arrays use different instrument profiles")
    n = arrays.n_rows
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    out_t = np.empty((len(registry.features), rows.shape[0]))  # C order: out_t.T is Fortran
    if rows.shape[0] == 0:
        return out_t.T
    if rows.min() < 0 or rows.max() >= n:
        raise IndexError(f"landmark rows must lie in 0..{n - 1}")
    plan = registry.statistics_table
    if n <= CHUNK_ROWS:
        _fill(arrays, plan, rows, out_t)
        return out_t.T
    # Chunks of consecutive output rows, each needing about CHUNK_ROWS rows of history: a chunk
    # gathers the clients it touches and writes its own block of columns of ``out_t``.
    seg_of = arrays.seg_of_row[rows]
    new_client = np.ones(rows.shape[0], dtype=bool)
    new_client[1:] = seg_of[1:] != seg_of[:-1]
    history = np.cumsum(np.where(new_client, arrays.lengths[seg_of], 0))
    cuts = np.searchsorted(history, np.arange(CHUNK_ROWS, int(history[-1]), CHUNK_ROWS))
    bounds = np.unique(np.concatenate(([0], cuts, [rows.shape[0]])))
    for o0, o1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        segments, local_seg = np.unique(seg_of[o0:o1], return_inverse=True)
        part = arrays.take_segments(segments)
        local = part.offsets[:-1][local_seg] + arrays.rank[rows[o0:o1]]
        _fill(part, plan, local, out_t[:, o0:o1])
    return out_t.T


def _fill(
    arrays: SessionArrays, plan: StatisticsTable, rows: np.ndarray, out_t: np.ndarray
) -> None:
    """Compute every statistic of ``arrays``; write the registry columns at ``rows`` to out_t."""
    table = _Table(plan, arrays.n_rows)
    seg = _Segments(arrays, len(arrays.profile.elements) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_attended = _attendance_features(arrays, seg, table)
        _rating_features(arrays, seg, table, n_attended)
        age = arrays.age.take(arrays.seg_of_row, out=table("client_age"), mode="clip")
        unknown = ~np.isfinite(age)
        age[unknown] = np.nan
        young = np.less(age, YOUNG_AGE_YEARS, out=table("client_age_under_25"))
        young[unknown] = np.nan
    missing = set(plan.rows) - table.written
    if missing:
        raise RuntimeError(f"the feature kernel does not compute {sorted(missing)}")
    # mode="clip": the caller checked the rows. Assigned, not taken into out_t: when batches are
    # chunked, out_t is a strided block, and a take into it goes through a temporary anyway.
    out_t[...] = table.data.take(rows, axis=1, mode="clip").take(plan.sources, axis=0)


class _Table:
    """One call's statistics table: ``registry.statistics_table`` rows by the history rows."""

    __slots__ = ("data", "n", "rows", "written")

    def __init__(self, plan: StatisticsTable, n: int) -> None:
        self.data = np.empty((plan.height, n))
        self.rows = plan.rows
        self.n = n
        self.written: set[str] = set()

    def __call__(self, key: str, lead: tuple[int, ...] = ()) -> np.ndarray:
        """Where statistic ``key`` goes: its table rows, ``(*lead, n)``; scratch if unused."""
        at = self.rows.get(key)
        if at is None:
            return np.empty((*lead, self.n))
        self.written.add(key)
        return self.data[at]


class _Segments:
    """Segmented operations over one :class:`SessionArrays`' segments (last axis = rows).

    Rows are referred to by *position*: row ``i`` of group ``g`` (a row of a ``(G, n)`` array)
    is ``g * (n + 1) + i + 1``, the flat index of ``[g, i + 1]`` in a ``(G, n + 1)`` buffer whose
    column 0 is padding; 0 means "no such row". A statistic stored in such a buffer
    (:meth:`padded`) with its fill value in column 0 is read at any positions with a single
    ``take``, missing rows reading the fill, without masking. 1-D arrays use the positions of
    group 0 (``i + 1``); a 1-D buffer read at another group's positions uses ``mode="wrap"``
    (positions modulo ``n + 1``). Positions grow with the row inside every group, so they
    compare like row numbers.
    """

    __slots__ = ("first_rows", "n", "pos", "runs", "single")

    def __init__(self, arrays: SessionArrays, n_groups: int) -> None:
        n = arrays.n_rows
        self.n = n
        self.single = arrays.n_clients == 1
        self.runs = () if self.single else arrays.runs
        self.first_rows = arrays.offsets[:-1]
        width = n + 1
        self.pos = np.arange(n_groups * width, dtype=np.int64).reshape(n_groups, width)[:, 1:]

    def padded(self, fill: float, lead: tuple[int, ...] = ()) -> np.ndarray:
        """A float64 ``(*lead, n + 1)`` buffer: ``fill`` in column 0, data in ``[..., 1:]``."""
        buf = np.empty((*lead, self.n + 1))
        buf[..., 0] = fill
        return buf

    def acc(self, ufunc: np.ufunc, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``ufunc.accumulate`` along the last axis, restarting at every segment.

        Accumulation is sequential along the last axis, so stacking same-shaped inputs along a
        leading axis and accumulating them in one call gives each the same bits as alone.
        """
        if self.single:
            return ufunc.accumulate(x, axis=-1, out=out)
        if out is None:
            out = np.empty_like(x)
        lead = x.shape[:-1]
        for a, b, length in self.runs:
            shape = (*lead, (b - a) // length, length)
            ufunc.accumulate(
                x[..., a:b].reshape(shape),
                axis=-1,
                out=out[..., a:b].reshape(shape, copy=False),
            )
        return out

    def last_true(self, mask: np.ndarray, per_group: bool = True) -> np.ndarray:
        """Position of the last ``True`` at or before each row in its segment, else 0.

        ``mask`` is ``(G, n)`` with a row per group, or with ``per_group=False`` one or more
        1-D masks (``(n,)`` or ``(k, n)``) whose positions are group 0's.
        """
        return self.acc(np.maximum, np.where(mask, self.pos if per_group else self.pos[0], 0))

    def previous(self, idx: np.ndarray) -> np.ndarray:
        """Positions ``idx`` shifted one row down inside segments (0 at each segment's first row),
        as a padded buffer (:meth:`padded`, fill 0)."""
        out = np.empty((*idx.shape[:-1], self.n + 1), dtype=idx.dtype)
        out[..., :2] = 0
        out[..., 2:] = idx[..., :-1]
        if not self.single:
            out[..., self.first_rows + 1] = 0
        return out


def _attendance_features(arrays: SessionArrays, seg: _Segments, table: _Table) -> np.ndarray:
    """Attendance codes, gaps between appointments, days since intake and last attendance;
    returns ``(n_rows,)`` attended appointments so far."""
    sn = arrays.session_number
    onehot = arrays.attendance == _CODES
    # Accumulated together: one row per attendance code, no-shows among appointments 1-3, gaps.
    stacked = np.empty((_N_CODES + 2, seg.n))
    stacked[:_N_CODES] = onehot
    np.logical_and(onehot[_NO_SHOW], sn <= 3, out=stacked[_N_CODES])
    # Padded (see _Segments): dates (NaN pad) and 1-based ranks (0 pad).
    day_p, k_p = padded = np.full((2, seg.n + 1), np.nan)
    k_p[0] = 0.0
    day = day_p[1:]
    day[:] = arrays.day
    gap = stacked[_N_CODES + 1]
    gap[0] = 0.0
    np.subtract(day[1:], day[:-1], out=gap[1:])
    if not seg.single:
        gap[seg.first_rows] = 0.0
    sums = seg.acc(np.add, stacked)
    counts = sums[:_N_CODES]
    k = np.add(arrays.rank, 1.0, out=padded[1, 1:])
    table("attendance_count", (_N_CODES,))[:] = counts
    np.divide(counts, k, out=table("attendance_rate", (_N_CODES,)))
    table("attendance_last", (_N_CODES,))[:] = stacked[:_N_CODES]
    table("attendance_no_show_first3")[:] = sums[_N_CODES]
    np.divide(sums[_N_CODES + 1], k - 1.0, out=table("attendance_gap_mean_days"))
    gap[seg.first_rows] = np.nan
    seg.acc(np.fmax, gap, out=table("attendance_gap_max_days"))

    not_missed, last_att = seg.last_true(
        _NOT_MISSED_ATTENDED.take(arrays.attendance, axis=1), per_group=False
    )
    np.subtract(k, k_p.take(not_missed), out=table("attendance_missed_streak"))
    np.subtract(day, day_p.take(last_att), out=table("engagement_days_since_attended"))
    np.equal(last_att, 0, out=table("engagement_never_attended"))
    table("engagement_landmark")[:] = sn
    np.subtract(
        day, arrays.intake_day[arrays.seg_of_row], out=table("engagement_days_since_intake")
    )
    return counts[_ATT]


def _rating_features(
    arrays: SessionArrays, seg: _Segments, table: _Table, n_attended: np.ndarray
) -> None:
    """Per element and for the element mean (last row of every ``(G, n)`` array).

    Row references are positions (see :class:`_Segments`); values read at them come from padded
    buffers (``*_p``, column 0 = the value of a missing row).
    """
    p = arrays.profile
    n_el = len(p.elements)
    n_groups = n_el + 1
    n = seg.n
    groups = (n_groups,)
    eps = TOLERANCE_FRACTION * p.scale_range
    floor = RUPTURE_FLOOR_FRACTION * p.scale_range

    # NaN-padded buffers: ratings of rated sessions, own SD, lowest element, session numbers.
    nan_p = np.full((2 * n_groups + 2, n + 1), np.nan)
    values_p, sd_p = nan_p[:n_groups], nan_p[n_groups : 2 * n_groups]
    lowest_p, sn_p = nan_p[-2], nan_p[-1]
    values = values_p[:, 1:]
    values[:] = rated_values(arrays)
    sn = sn_p[1:]
    sn[:] = arrays.session_number
    rated = values == values  # rated_values leaves NaN exactly where a group is not rated
    lowest = np.fmin.reduce(values[:n_el], axis=0, out=lowest_p[1:])
    # Layers: [0] rated (0/1), [1] early values (0 when not), [2] early rated (0/1).
    layers = np.zeros((3, n_groups, n))
    layers[0] = rated
    early = rated & (arrays.session_number <= 3)
    np.copyto(layers[1], values, where=early)
    layers[2] = early
    counts_p = seg.padded(0.0, (3, n_groups))
    seg.acc(np.add, layers, out=counts_p[..., 1:])
    m_p = counts_p[0]
    m = m_p[:, 1:]  # rated sessions so far (exact integers in float64)
    table("n_rated", groups)[:] = m
    np.divide(counts_p[1, :, 1:], counts_p[2, :, 1:], out=table("early_mean", groups))
    m1 = m - 1.0
    # Adding nan_below[0] / nan_below[1] (0 or NaN) blanks a statistic with fewer than 1 / 2
    # rated sessions; cheaper than np.where, and it also turns the 0/0 of a single session into
    # NaN.
    nan_below_1, nan_below_2 = np.where(m > _BELOW, 0.0, np.nan)

    last_row = seg.last_true(rated)
    prev_of_p = seg.previous(last_row)  # at a rated row: the rated row before it
    prev_of = prev_of_p[:, 1:]
    prev_row = prev_of_p.take(last_row)
    last = values_p.take(last_row, out=table("last", groups), mode="clip")
    prev = values_p.take(prev_row)
    np.subtract(last, prev, out=table("change_prev", groups))
    # The same sum as with NaN-masked terms: missing earlier sessions add 0.0.
    zero_p = values_p.copy()
    zero_p[:, 0] = 0.0
    last3 = last + zero_p.take(prev_row)
    last3 += zero_p.take(prev_of_p.take(prev_row))
    np.divide(last3, np.minimum(m, 3.0), out=table("last3_mean", groups))
    seg.acc(np.fmin, values, out=table("min", groups))

    # Sums over rated sessions, centred on the client's first rating (see module docstring).
    # The first rated position, or values_p.size (wrapping to the NaN pad) before any.
    first = values_p.take(seg.acc(np.minimum, np.where(rated, seg.pos, values_p.size)), mode="wrap")
    before = values_p.take(prev_of)  # at a rated row: the previous rated value
    step = values - before  # NaN unless rated with a previous rated value
    # Accumulated together: y, y^2, (m - 1) y for the slope, squared successive differences.
    sums = np.zeros((4, n_groups, n))
    y = sums[0]
    np.subtract(values, first, out=y, where=rated)
    np.multiply(y, y, out=sums[1])
    np.multiply(m1, y, out=sums[2], where=rated)
    np.multiply(step, step, out=sums[3], where=step == step)
    s1, s2, sty, ssd = seg.acc(np.add, sums)
    np.add(np.subtract(last, first), nan_below_2, out=table("change_first", groups))
    np.add(np.subtract(last, first + s1 / m), nan_below_2, out=table("dev_own_mean", groups))
    # OLS against t = 0..m-1: Sxy = sum(t*y) - tbar*sum(y), Sxx = m(m^2 - 1)/12.
    slope = np.divide(sty - 0.5 * m1 * s1, m * (m * m - 1.0) / 12.0)
    np.add(slope, nan_below_2, out=table("slope", groups))
    np.add(ssd / m1, nan_below_2, out=table("mssd", groups))
    sd = np.add(np.sqrt(np.maximum(s2 - s1 * s1 / m, 0.0) / m1), nan_below_2, out=sd_p[:, 1:])
    table("sd", groups)[:] = sd

    # Ruptures: drop from the previous rated value >= z * max(own SD up to that session, floor),
    # the floor alone while fewer than RUPTURE_MIN_HISTORY sessions were rated by then (m at the
    # previous rated row = sessions rated before this row = m - rated).
    base = np.where(m - layers[0] >= RUPTURE_MIN_HISTORY, np.fmax(sd_p.take(prev_of), floor), floor)
    drop = -step
    rupture = drop >= base - eps
    n_ruptures = np.empty((2, n_groups, n))
    n_ruptures[0] = rupture
    n_ruptures[1] = drop >= 2.0 * base - eps
    n_rup = seg.acc(np.add, n_ruptures)
    table("ruptures_1sd", groups)[:] = n_rup[0]
    table("ruptures_2sd", groups)[:] = n_rup[1]
    np.greater(n_rup[0], 0.0, out=table("has_rupture", groups))
    rup_row = seg.last_true(rupture)
    level_before = values_p.take(prev_of_p.take(rup_row))  # the level the rating dropped from
    back = seg.last_true(values >= level_before - eps)  # NaN compares False
    np.logical_and(rup_row > 0, back <= rup_row, out=table("unrepaired", groups))
    np.subtract(sn, sn_p.take(rup_row, mode="wrap"), out=table("sessions_since_rupture", groups))

    # Instrument rules. The overall row compares the element mean with the total cut-off
    # prorated to one element (SRS: total < 36 <=> mean of 4 items < 9).
    per_el = n_el if p.total == "sum" else 1
    cutoffs = np.array([[p.element_cutoff - eps]] * n_el + [[p.cutoff_total / per_el - eps]])
    below = np.less(last, cutoffs, out=table("below_cutoff", groups))
    below += nan_below_1
    o_m, o_rated = m[n_el], rated[n_el]
    any_below = np.less(
        lowest_p.take(last_row[n_el], mode="wrap"),
        p.element_cutoff - eps,
        out=table("alliance_overall_any_element_below_cutoff"),
    )
    any_below += nan_below_1[n_el]
    # A rated session has a finite lowest element, so < is the negation of >= here.
    not_ceiling = seg.last_true(o_rated & (lowest < p.scale_max - eps), per_group=False)
    streak = np.subtract(
        o_m, m_p[n_el].take(not_ceiling), out=table("alliance_overall_ceiling_streak")
    )
    np.greater_equal(streak, 2.0, out=table("alliance_overall_ceiling_flag"))
    drop_alert = np.greater_equal(
        prev[n_el] - last[n_el],
        p.drop_points / per_el - eps,
        out=table("alliance_overall_drop_alert"),
    )
    drop_alert += nan_below_2[n_el]
    np.equal(o_m, 0.0, out=table("engagement_never_rated"))
    # 0/0 = NaN: never attended.
    np.divide(n_attended - o_m, n_attended, out=table("engagement_unrated_share"))
