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
so a constant series has an SD of exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


class _Segments:
    """Segmented operations over one :class:`SessionArrays`' segments (last axis = rows)."""

    __slots__ = ("ar", "first_rows", "group_offsets", "n", "runs", "single")

    def __init__(self, arrays: SessionArrays) -> None:
        self.n = arrays.n_rows
        self.single = arrays.n_clients == 1
        self.runs = () if self.single else arrays.runs
        self.ar = np.arange(self.n, dtype=np.int64)
        self.first_rows = arrays.offsets[:-1]
        self.group_offsets = np.arange(len(arrays.profile.elements) + 1)[:, None] * self.n

    def acc(self, ufunc: np.ufunc, x: np.ndarray, dtype: type | None = None) -> np.ndarray:
        """``ufunc.accumulate`` along the last axis, restarting at every segment."""
        if self.single:
            return ufunc.accumulate(x, axis=-1, dtype=dtype)
        out = np.empty(x.shape, dtype=dtype or x.dtype)
        lead = x.shape[:-1]
        for a, b, length in self.runs:
            shape = (*lead, (b - a) // length, length)
            ufunc.accumulate(
                x[..., a:b].reshape(shape), axis=-1, dtype=dtype, out=out[..., a:b].reshape(shape)
            )
        return out

    def last_true(self, mask: np.ndarray) -> np.ndarray:
        """Row index of the last ``True`` at or before each row in its segment, else -1."""
        return self.acc(np.maximum, np.where(mask, self.ar, -1))

    def previous(self, idx: np.ndarray) -> np.ndarray:
        """``idx`` shifted one row down inside segments (-1 at each segment's first row)."""
        out = np.empty_like(idx)
        out[..., 0] = -1
        out[..., 1:] = idx[..., :-1]
        if not self.single:
            out[..., self.first_rows] = -1
        return out

    def take(self, values: np.ndarray, idx: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """``values[..., idx]`` row by row (``(G, n)`` or ``(n,)``); ``fill`` where idx is -1."""
        # 1-D: -1 wraps around; 2-D: flat positions into C-contiguous values. Masked below.
        got = values[idx] if values.ndim == 1 else values.take(idx + self.group_offsets)
        return np.where(idx >= 0, got, fill)


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
        spec = self.layout.get(key)
        if spec is None:
            return
        cols, src = spec
        arr = values() if callable(values) else values
        rows = self.rows
        if self.keys is not None:
            self.parts.append(arr[None] if arr.ndim == 1 else arr if src is None else arr[src])
            self.keys.append(key)
        elif arr.ndim == 1:
            arr.take(rows, out=self.out_t[cols[0]], mode="clip")
        else:
            sources = range(cols.shape[0]) if src is None else src.tolist()
            for c, s in zip(cols.tolist(), sources, strict=True):
                arr[s].take(rows, out=self.out_t[c], mode="clip")
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
    seg = _Segments(arrays)
    emit = _Writer(out, rows, registry, collect=arrays.n_rows <= _SMALL_HISTORY)
    with np.errstate(divide="ignore", invalid="ignore"):
        _rating_features(arrays, seg, emit)
        _attendance_features(arrays, seg, emit)
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


def _rating_features(arrays: SessionArrays, seg: _Segments, emit: _Writer) -> None:
    """Per element and for the element mean (last row of every ``(G, n)`` array)."""
    p = arrays.profile
    n_el = len(p.elements)
    eps = TOLERANCE_FRACTION * p.scale_range
    floor = RUPTURE_FLOOR_FRACTION * p.scale_range
    f64 = np.float64
    attended = arrays.attendance == _ATT

    # Session level: which elements count, the element mean and the lowest rated element.
    r = arrays.ratings
    rated = np.empty((n_el + 1, seg.n), dtype=bool)
    np.logical_and(np.isfinite(r), attended, out=rated[:n_el])  # inf counts as not rated
    values = np.empty((n_el + 1, seg.n))
    values[:n_el] = np.where(rated[:n_el], r, np.nan)
    zeroed = np.where(rated[:n_el], r, 0.0)
    total = zeroed[0].copy()
    for e in range(1, n_el):  # fixed order: the same sum alone and in a batch
        total += zeroed[e]
    n_el_rated = rated[:n_el].sum(axis=0)
    rated[n_el] = n_el_rated > 0
    values[n_el] = total / n_el_rated
    lowest = np.fmin.reduce(values[:n_el], axis=0)

    m = seg.acc(np.add, rated, f64)  # rated sessions so far (exact integers in float64)
    emit("n_rated", m)
    some = m > 0
    two = m > 1

    last_row = seg.last_true(rated)
    prev_of = seg.previous(last_row)  # at a rated row: the rated row before it
    prev_row = seg.take(prev_of, last_row, -1)
    last = seg.take(values, last_row)
    prev = seg.take(values, prev_row)
    emit("last", last)
    emit("change_prev", lambda: last - prev)

    def last3() -> np.ndarray:
        prev2 = seg.take(values, seg.take(prev_of, prev_row, -1))
        s = last + np.where(m > 1, prev, 0.0) + np.where(m > 2, prev2, 0.0)
        return s / np.minimum(m, 3.0)

    emit("last3_mean", last3)
    emit("min", lambda: seg.acc(np.fmin, values))

    def early_mean() -> np.ndarray:
        early = rated & (arrays.session_number <= 3)
        return seg.acc(np.add, np.where(early, values, 0.0)) / seg.acc(np.add, early, f64)

    emit("early_mean", early_mean)

    # Sums over rated sessions, centred on the client's first rating (see module docstring).
    first_row = np.where(some, seg.acc(np.minimum, np.where(rated, seg.ar, seg.n)), -1)
    first = seg.take(values, first_row)
    y = np.where(rated, values - first, 0.0)
    s1 = seg.acc(np.add, y)
    # Adding nan_below_2 (0 or NaN) blanks a statistic with fewer than 2 rated sessions; cheaper
    # than np.where, and it also turns the 0/0 of a single session into NaN.
    nan_below_1 = np.where(some, 0.0, np.nan)
    nan_below_2 = np.where(two, 0.0, np.nan)
    emit("change_first", lambda: last - first + nan_below_2)
    emit("dev_own_mean", lambda: last - (first + s1 / m) + nan_below_2)
    s2 = seg.acc(np.add, y * y)
    sd = np.sqrt(np.maximum(s2 - s1 * s1 / m, 0.0) / (m - 1.0)) + nan_below_2
    emit("sd", sd)

    def slope() -> np.ndarray:
        # OLS against t = 0..m-1: Sxy = sum(t*y) - tbar*sum(y), Sxx = m(m^2 - 1)/12.
        sty = seg.acc(np.add, np.where(rated, (m - 1.0) * y, 0.0))
        return (sty - 0.5 * (m - 1.0) * s1) / (m * (m * m - 1.0) / 12.0) + nan_below_2

    emit("slope", slope)

    # Successive differences between consecutive rated sessions.
    before = seg.take(values, prev_of)  # at a rated row: the previous rated value
    step = values - before  # NaN unless rated with a previous rated value
    emit(
        "mssd",
        lambda: seg.acc(np.add, np.where(step == step, step * step, 0.0)) / (m - 1.0) + nan_below_2,
    )

    # Ruptures: drop from the previous rated value >= z * max(own SD up to that session, floor),
    # the floor alone while fewer than RUPTURE_MIN_HISTORY sessions were rated by then.
    base = np.where(
        seg.take(m, prev_of, 0.0) >= RUPTURE_MIN_HISTORY,
        np.fmax(seg.take(sd, prev_of), floor),
        floor,
    )
    drop = -step
    rupture = drop >= base - eps
    n_rup = seg.acc(np.add, rupture, f64)
    emit("ruptures_1sd", n_rup)
    emit("ruptures_2sd", lambda: seg.acc(np.add, drop >= 2.0 * base - eps, f64))
    emit("has_rupture", lambda: (n_rup > 0).astype(f64))
    rup_row = seg.last_true(rupture)
    level_before = seg.take(before, rup_row)  # the level the rating dropped from
    repaired = seg.last_true(values >= level_before - eps) > rup_row  # NaN compares False
    emit("unrepaired", ((rup_row >= 0) & ~repaired).astype(f64))
    sn = arrays.session_number
    emit("sessions_since_rupture", lambda: sn - seg.take(sn.astype(f64), rup_row))

    # Instrument rules. The overall row compares the element mean with the total cut-off
    # prorated to one element (SRS: total < 36 <=> mean of 4 items < 9).
    per_el = n_el if p.total == "sum" else 1
    cutoffs = np.full((n_el + 1, 1), p.element_cutoff - eps)
    cutoffs[n_el] = p.cutoff_total / per_el - eps
    emit("below_cutoff", lambda: (last < cutoffs) + nan_below_1)
    o_m, o_rated = m[n_el], rated[n_el]
    emit(
        "alliance_overall_any_element_below_cutoff",
        lambda: (seg.take(lowest, last_row[n_el]) < p.element_cutoff - eps) + nan_below_1[n_el],
    )
    not_ceiling = seg.last_true(o_rated & ~(lowest >= p.scale_max - eps))
    streak = o_m - seg.take(o_m, not_ceiling, 0.0)
    emit("alliance_overall_ceiling_streak", streak)
    emit("alliance_overall_ceiling_flag", lambda: (streak >= 2.0).astype(f64))
    emit(
        "alliance_overall_drop_alert",
        lambda: (prev[n_el] - last[n_el] >= p.drop_points / per_el - eps) + nan_below_2[n_el],
    )
    emit("engagement_never_rated", lambda: (o_m == 0.0).astype(f64))

    def unrated_share() -> np.ndarray:
        n_att = seg.acc(np.add, attended, f64)
        return (n_att - o_m) / n_att  # 0/0 = NaN when never attended

    emit("engagement_unrated_share", unrated_share)


def _attendance_features(arrays: SessionArrays, seg: _Segments, emit: _Writer) -> None:
    """Attendance codes, gaps between appointments, days since intake and last attendance."""
    f64 = np.float64
    att = arrays.attendance
    sn = arrays.session_number
    onehot = att == np.arange(_N_CODES, dtype=np.int8)[:, None]
    counts = seg.acc(np.add, onehot, f64)
    k = arrays.rank + 1.0
    emit("attendance_count", counts)
    emit("attendance_rate", lambda: counts / k)
    emit("attendance_last", lambda: onehot.astype(f64))
    emit(
        "attendance_no_show_first3",
        lambda: seg.acc(np.add, onehot[_NO_SHOW] & (sn <= 3), f64),
    )
    not_missed = seg.last_true(~(onehot[_NO_SHOW] | onehot[_LATE]))
    emit("attendance_missed_streak", lambda: np.where(not_missed >= 0, seg.ar - not_missed, k))

    day = arrays.day.astype(f64)
    gap = np.empty_like(day)
    gap[0] = 0.0
    np.subtract(day[1:], day[:-1], out=gap[1:])
    if not seg.single:
        gap[seg.first_rows] = 0.0
    emit("attendance_gap_mean_days", lambda: seg.acc(np.add, gap) / (k - 1.0))
    gap[seg.first_rows] = np.nan
    emit("attendance_gap_max_days", lambda: seg.acc(np.fmax, gap))

    last_att = seg.last_true(onehot[_ATT])
    emit("engagement_days_since_attended", lambda: day - seg.take(day, last_att))
    emit("engagement_never_attended", lambda: (last_att < 0).astype(f64))
    emit("engagement_landmark", lambda: sn.astype(f64))
    emit("engagement_days_since_intake", lambda: day - arrays.intake_day[arrays.seg_of_row])
