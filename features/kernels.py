"""The numpy core: every feature as an expanding, per-client statistic over sorted segments.

Each session row is a landmark: its features are computed from the rows at or before it in the
same segment, which makes them leakage-free by construction. All work is segmented numpy: there
is no per-client Python loop. The only Python loops run over a fixed handful of elements,
attendance codes and runs of equal-length segments.

Exactness. Prefix sums are computed inside each segment (equal-length segments are reshaped to
``(n_clients, length)`` blocks and accumulated along the last axis), never as one global cumsum
minus offsets: a global float cumsum carries other clients' rounding into every client, and a
mean of 9.0 could come out as 8.999999999 and flip a cut-off rule. With segment-local sums, a
client's features are bit-identical whether it is computed alone (serving) or in a batch of
100,000 (training). Ratings are centred on the client's first rating before sums of squares,
so a constant series has an SD of exactly 0. (Only a NaN's sign bit may differ: which operand's
NaN numpy keeps in NaN + NaN depends on the loop it picks for the array size.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from features.arrays import SessionArrays
from features.contract import ATTENDANCE_CODES, ATTENDED, LATE_CANCEL, NO_SHOW
from features.registry import (
    RUPTURE_FLOOR_FRACTION,
    RUPTURE_MIN_HISTORY,
    YOUNG_AGE_YEARS,
    FeatureRegistry,
)

#: Above this many rows, batches are computed in client chunks of about this size, bounding the
#: memory of intermediates (each chunk depends only on its own clients' rows).
CHUNK_ROWS = 1 << 17
#: Comparisons with cut-offs tolerate this fraction of the scale range, so that decimal ratings
#: such as 8.7 - 8.2 (= 0.4999999999999991 in binary) meet a 0.5 threshold.
TOLERANCE_FRACTION = 1e-9
#: Up to this many history rows, statistics are collected and written in one go (serving).
_SMALL_HISTORY = 1024

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
        self.pos = np.ascontiguousarray(
            np.arange(n_groups * width, dtype=np.int64).reshape(n_groups, width)[:, 1:]
        )

    def padded(self, fill: float, lead: tuple[int, ...] = ()) -> np.ndarray:
        """A float64 ``(*lead, n + 1)`` buffer, ``fill`` in column 0, data to go in ``[..., 1:]``."""
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


class _Writer:
    """Writes computed statistics into the output columns the registry assigns them.

    With many rows each statistic is copied straight into its output columns. With a short
    history (serving) numpy's per-call overhead dominates, so the statistics are collected and the
    landmark rows picked and written with one gather and one assignment at the end, in a column
    order cached per registry layout.
    """

    __slots__ = ("filled", "keys", "layout", "out_t", "parts", "rows")

    def __init__(
        self, out: np.ndarray, rows: np.ndarray, registry: FeatureRegistry, collect: bool
    ) -> None:
        self.out_t = out.T
        self.rows = rows
        self.layout = registry.layout
        self.filled = 0
        self.keys: list[str] | None = [] if collect else None
        self.parts: list[np.ndarray] = []

    def __call__(self, key: str, values: np.ndarray | Callable[[], np.ndarray]) -> None:
        """Place statistic ``key``: float64, or bool for 0/1 flags (cast when written)."""
        spec = self.layout.get(key)
        if spec is None:
            return
        cols, src = spec
        arr = values() if callable(values) else values
        if self.keys is not None:
            self.parts.append(arr[None] if arr.ndim == 1 else arr if src is None else arr[src])
            self.keys.append(key)
            self.filled += cols.shape[0]
            return
        rows = self.rows
        if arr.ndim == 1:
            arr = arr[None]
            src = None
        sources = range(cols.shape[0]) if src is None else src.tolist()
        for c, s in zip(cols.tolist(), sources, strict=True):
            if arr.dtype == np.float64:
                arr[s].take(rows, out=self.out_t[c], mode="clip")
            else:  # a flag: picked, then cast on assignment
                self.out_t[c] = arr[s].take(rows, mode="clip")
        self.filled += cols.shape[0]

    def flush(self) -> None:
        """Write the collected rows (few-rows mode)."""
        if not self.keys:
            return
        keys = tuple(self.keys)
        cached = _COLUMN_ORDER.get(id(self.layout))
        if cached is None or cached[0] is not self.layout or cached[1] != keys:
            cols = np.concatenate([self.layout[k][0] for k in keys])
            cached = (self.layout, keys, cols)
            _COLUMN_ORDER[id(self.layout)] = cached
        self.out_t[cached[2]] = np.concatenate(self.parts)[:, self.rows]


#: id(layout) -> (layout, emitted keys, output columns in emission order); the layout is kept
#: referenced so its id cannot be reused while the entry exists.
_COLUMN_ORDER: dict[int, tuple[dict[str, Any], tuple[str, ...], np.ndarray]] = {}


def compute_feature_matrix(
    arrays: SessionArrays, registry: FeatureRegistry, rows: np.ndarray | None = None
) -> np.ndarray:
    """Features at the landmark rows ``rows`` of ``arrays``, columns in ``registry`` order.

    Parameters
    ----------
    arrays
        Sorted session arrays (:meth:`SessionArrays.from_frames` or
        :meth:`SessionArrays.single_client`).
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
    rows = np.arange(arrays.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.shape[0], len(registry.features)), dtype=np.float64, order="F")
    if rows.shape[0] == 0:
        return out
    if arrays.n_rows <= CHUNK_ROWS or arrays.n_clients == 1:
        _fill(arrays, registry, rows, out)
        return out
    # Chunks of consecutive output rows, each needing about CHUNK_ROWS rows of history: a chunk
    # gathers the clients it touches and writes its own contiguous block of ``out``.
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
        _fill(part, registry, local, out[o0:o1])
    return out


def _fill(
    arrays: SessionArrays, registry: FeatureRegistry, rows: np.ndarray, out: np.ndarray
) -> None:
    seg = _Segments(arrays, len(arrays.profile.elements) + 1)
    emit = _Writer(out, rows, registry, collect=arrays.n_rows <= _SMALL_HISTORY)
    with np.errstate(divide="ignore", invalid="ignore"):
        att = _attendance_features(arrays, seg, emit)
        _rating_features(arrays, seg, emit, att)
        if registry.include_covariates:
            age = arrays.age[arrays.seg_of_row]
            age = np.where(np.isfinite(age), age, np.nan)
            emit("client_age", age)
            emit(
                "client_age_under_25",
                np.where(np.isnan(age), np.nan, (age < YOUNG_AGE_YEARS).astype(np.float64)),
            )
    emit.flush()
    if emit.filled != out.shape[1]:
        raise RuntimeError(
            f"feature kernel filled {emit.filled} of {out.shape[1]} registry columns"
        )


class _Attendance(NamedTuple):
    """What the rating features reuse from the attendance pass, ``(n_rows,)`` each."""

    attended: np.ndarray  # bool: the appointment was attended
    n_attended: np.ndarray  # float64: attended appointments so far
    first3: np.ndarray  # bool: appointments 1-3


def _attendance_features(arrays: SessionArrays, seg: _Segments, emit: _Writer) -> _Attendance:
    """Attendance codes, gaps between appointments, days since intake and last attendance."""
    f64 = np.float64
    sn = arrays.session_number
    onehot = arrays.attendance == _CODES
    first3 = sn <= 3
    # Accumulated together: one row per attendance code, no-shows among appointments 1-3, gaps.
    stacked = np.empty((_N_CODES + 2, seg.n))
    stacked[:_N_CODES] = onehot
    np.logical_and(onehot[_NO_SHOW], first3, out=stacked[_N_CODES])
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
    emit("attendance_count", counts)
    emit("attendance_rate", lambda: counts / k)
    emit("attendance_last", stacked[:_N_CODES])
    emit("attendance_no_show_first3", sums[_N_CODES])
    emit("attendance_gap_mean_days", lambda: sums[_N_CODES + 1] / (k - 1.0))
    gap[seg.first_rows] = np.nan
    emit("attendance_gap_max_days", lambda: seg.acc(np.fmax, gap))

    not_missed, last_att = seg.last_true(
        _NOT_MISSED_ATTENDED.take(arrays.attendance, axis=1), per_group=False
    )
    emit("attendance_missed_streak", lambda: k - k_p.take(not_missed))
    emit("engagement_days_since_attended", lambda: day - day_p.take(last_att))
    emit("engagement_never_attended", lambda: last_att == 0)
    emit("engagement_landmark", lambda: sn.astype(f64))
    emit("engagement_days_since_intake", lambda: day - arrays.intake_day[arrays.seg_of_row])
    return _Attendance(onehot[_ATT], counts[_ATT], first3)


def _rating_features(
    arrays: SessionArrays, seg: _Segments, emit: _Writer, att: _Attendance
) -> None:
    """Per element and for the element mean (last row of every ``(G, n)`` array).

    Row references are positions (see :class:`_Segments`); values read at them come from padded
    buffers (``*_p``, column 0 = the value of a missing row).
    """
    p = arrays.profile
    n_el = len(p.elements)
    n_groups = n_el + 1
    n = seg.n
    eps = TOLERANCE_FRACTION * p.scale_range
    floor = RUPTURE_FLOOR_FRACTION * p.scale_range
    f64 = np.float64

    # NaN-padded buffers: ratings of rated sessions, own SD, lowest element, session numbers.
    nan_p = np.full((2 * n_groups + 2, n + 1), np.nan)
    values_p, sd_p = nan_p[:n_groups], nan_p[n_groups : 2 * n_groups]
    lowest_p, sn_p = nan_p[-2], nan_p[-1]
    values = values_p[:, 1:]
    sn = sn_p[1:]
    sn[:] = arrays.session_number

    # Session level: which elements count, the element mean and the lowest rated element.
    r = arrays.ratings
    rated = np.empty((n_groups, n), dtype=bool)
    np.logical_and(np.isfinite(r), att.attended, out=rated[:n_el])  # inf counts as not rated
    np.copyto(values[:n_el], r, where=rated[:n_el])
    # Layers: [0] ratings with 0 for unrated, [1] rated (0/1), [2] early values, [3] early rated.
    layers = np.zeros((4, n_groups, n))
    np.copyto(layers[0, :n_el], r, where=rated[:n_el])
    layers[1, :n_el] = rated[:n_el]
    # Sums over the elements (ratings and how many are rated, together) in a fixed order: the
    # same alone and in a batch.
    total, n_el_rated = summed = layers[:2, 0].copy()
    for e in range(1, n_el):
        summed += layers[:2, e]
    np.greater(n_el_rated, 0.0, out=rated[n_el])
    np.minimum(n_el_rated, 1.0, out=layers[1, n_el])
    np.divide(total, n_el_rated, out=values[n_el])
    lowest = np.fmin.reduce(values[:n_el], axis=0, out=lowest_p[1:])
    early = rated & att.first3
    np.copyto(layers[2], values, where=early)
    layers[3] = early
    counts_p = seg.padded(0.0, (3, n_groups))
    seg.acc(np.add, layers[1:], out=counts_p[..., 1:])
    m_p = counts_p[0]
    m = m_p[:, 1:]  # rated sessions so far (exact integers in float64)
    emit("n_rated", m)
    emit("early_mean", lambda: counts_p[1, :, 1:] / counts_p[2, :, 1:])
    m1 = m - 1.0
    # Adding nan_below[0] / nan_below[1] (0 or NaN) blanks a statistic with fewer than 1 / 2
    # rated sessions; cheaper than np.where, and it also turns the 0/0 of a single session into
    # NaN.
    nan_below_1, nan_below_2 = np.where(m > _BELOW, 0.0, np.nan)

    last_row = seg.last_true(rated)
    prev_of_p = seg.previous(last_row)  # at a rated row: the rated row before it
    prev_of = prev_of_p[:, 1:]
    prev_row = prev_of_p.take(last_row)
    last = values_p.take(last_row)
    prev = values_p.take(prev_row)
    emit("last", last)
    emit("change_prev", lambda: last - prev)

    def last3() -> np.ndarray:
        # The same sum as with NaN-masked terms: missing earlier sessions add 0.0.
        zero_p = values_p.copy()
        zero_p[:, 0] = 0.0
        s = last + zero_p.take(prev_row) + zero_p.take(prev_of_p.take(prev_row))
        return s / np.minimum(m, 3.0)

    emit("last3_mean", last3)
    emit("min", lambda: seg.acc(np.fmin, values))

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
    # Statistics blanked below 2 rated sessions, stacked so that one addition blanks them all.
    blank2 = np.empty((4, n_groups, n))
    np.subtract(last, first, out=blank2[0])
    np.subtract(last, first + s1 / m, out=blank2[1])
    # OLS against t = 0..m-1: Sxy = sum(t*y) - tbar*sum(y), Sxx = m(m^2 - 1)/12.
    np.divide(sty - 0.5 * m1 * s1, m * (m * m - 1.0) / 12.0, out=blank2[2])
    np.divide(ssd, m1, out=blank2[3])
    blank2 += nan_below_2
    emit("change_first", blank2[0])
    emit("dev_own_mean", blank2[1])
    emit("slope", blank2[2])
    emit("mssd", blank2[3])
    sd = np.add(np.sqrt(np.maximum(s2 - s1 * s1 / m, 0.0) / m1), nan_below_2, out=sd_p[:, 1:])
    emit("sd", sd)

    # Ruptures: drop from the previous rated value >= z * max(own SD up to that session, floor),
    # the floor alone while fewer than RUPTURE_MIN_HISTORY sessions were rated by then (m at the
    # previous rated row = sessions rated before this row = m - rated).
    base = np.where(m - layers[1] >= RUPTURE_MIN_HISTORY, np.fmax(sd_p.take(prev_of), floor), floor)
    drop = -step
    rupture = drop >= base - eps
    n_ruptures = np.empty((2, n_groups, n))
    n_ruptures[0] = rupture
    n_ruptures[1] = drop >= 2.0 * base - eps
    n_rup, n_rup2 = seg.acc(np.add, n_ruptures)
    emit("ruptures_1sd", n_rup)
    emit("ruptures_2sd", n_rup2)
    emit("has_rupture", lambda: n_rup > 0.0)
    rup_row = seg.last_true(rupture)
    level_before = values_p.take(prev_of_p.take(rup_row))  # the level the rating dropped from
    back = seg.last_true(values >= level_before - eps)  # NaN compares False
    emit("unrepaired", lambda: (rup_row > 0) & (back <= rup_row))
    emit("sessions_since_rupture", lambda: sn - sn_p.take(rup_row, mode="wrap"))

    # Instrument rules. The overall row compares the element mean with the total cut-off
    # prorated to one element (SRS: total < 36 <=> mean of 4 items < 9).
    per_el = n_el if p.total == "sum" else 1
    cutoffs = np.array([[p.element_cutoff - eps]] * n_el + [[p.cutoff_total / per_el - eps]])
    emit("below_cutoff", lambda: (last < cutoffs).astype(f64) + nan_below_1)
    o_m, o_rated = m[n_el], rated[n_el]
    emit(
        "alliance_overall_any_element_below_cutoff",
        lambda: (
            (lowest_p.take(last_row[n_el], mode="wrap") < p.element_cutoff - eps).astype(f64)
            + nan_below_1[n_el]
        ),
    )
    # A rated session has a finite lowest element, so < is the negation of >= here.
    not_ceiling = seg.last_true(o_rated & (lowest < p.scale_max - eps), per_group=False)
    streak = o_m - m_p[n_el].take(not_ceiling)
    emit("alliance_overall_ceiling_streak", streak)
    emit("alliance_overall_ceiling_flag", lambda: streak >= 2.0)
    emit(
        "alliance_overall_drop_alert",
        lambda: (
            (prev[n_el] - last[n_el] >= p.drop_points / per_el - eps).astype(f64)
            + nan_below_2[n_el]
        ),
    )
    emit("engagement_never_rated", lambda: o_m == 0.0)
    n_att = att.n_attended
    emit("engagement_unrated_share", lambda: (n_att - o_m) / n_att)  # 0/0 = NaN: never attended
