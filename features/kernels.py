"""Every landmark feature as an expanding, per-client statistic over sorted client segments.

Each session row is a landmark: its features are computed from the rows at or before it in the
same client, which makes them leakage-free by construction. The arithmetic lives in one compiled
pass (``features/_kernel.c``): per client, per row, a few running values per rating group and per
attendance code. The same code computes one client for the API and 100,000 for training, and a
client's features are bit-identical either way, since nothing crosses from one client to the
next. (It replaced a segmented-numpy kernel whose ~100 array calls cost ~0.3 ms for one client;
the compiled pass gives the same bits.)

Exactness. Cut-off comparisons tolerate :data:`TOLERANCE_FRACTION` of the scale range, so
that decimal ratings such as 8.7 - 8.2 (= 0.4999999999999991 in binary) meet a 0.5 threshold.
Ratings are centred on the client's first rating before sums of squares, so a constant series
has an SD of exactly 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features import _kernel
from features.arrays import SessionArrays
from features.contract import ATTENDANCE_CODES, ATTENDED, LATE_CANCEL, NO_SHOW
from features.registry import (
    RUPTURE_FLOOR_FRACTION,
    RUPTURE_MIN_HISTORY,
    YOUNG_AGE_YEARS,
    FeatureRegistry,
)

#: Comparisons with cut-offs tolerate this fraction of the scale range.
TOLERANCE_FRACTION = 1e-9

_CODES = np.array(
    [
        len(ATTENDANCE_CODES),
        ATTENDANCE_CODES.index(ATTENDED),
        ATTENDANCE_CODES.index(NO_SHOW),
        ATTENDANCE_CODES.index(LATE_CANCEL),
    ],
    dtype=np.int64,
)
#: The kernel's statistics table: (key, kind) with kind 0 = one value, 1 = one per attendance
#: code, 2 = one per rating group.
STAT_KEYS: tuple[tuple[str, int], ...] = _kernel.stat_keys()


def _sources(registry: FeatureRegistry) -> np.ndarray:
    """``(n_features,)`` int64: the kernel table entry feeding each output column."""
    n_groups = len(registry.profile.elements) + 1
    sizes = (1, len(ATTENDANCE_CODES), n_groups)
    offset: dict[str, tuple[int, int]] = {}
    at = 0
    for key, kind in STAT_KEYS:
        offset[key] = (at, sizes[kind])
        at += sizes[kind]
    src = np.full(len(registry.features), -1, dtype=np.int64)
    for key, (cols, rows) in registry.layout.items():
        if key not in offset:
            raise RuntimeError(f"the feature kernel does not compute {key!r}")
        start, size = offset[key]
        picks = np.arange(cols.shape[0]) if rows is None else rows
        if picks.shape[0] and (picks.min() < 0 or picks.max() >= size):
            raise RuntimeError(f"feature kernel: {key!r} has {size} rows")
        src[cols] = start + picks
    if (src < 0).any():
        raise RuntimeError(
            f"feature kernel filled {int((src >= 0).sum())} of {src.shape[0]} registry columns"
        )
    return src


#: id(registry) -> (registry, sources, per-group cut-offs, scalar parameters); the registry is
#: kept referenced so its id cannot be reused while the entry exists. A service loads one
#: registry per model version, so the cache is emptied when it reaches :data:`_MAX_PLANS`.
_PLANS: dict[int, tuple[FeatureRegistry, np.ndarray, np.ndarray, np.ndarray]] = {}
_MAX_PLANS = 64


def _plan(registry: FeatureRegistry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cached = _PLANS.get(id(registry))
    if cached is not None and cached[0] is registry:
        return cached[1], cached[2], cached[3]
    p = registry.profile
    eps = TOLERANCE_FRACTION * p.scale_range
    n_el = len(p.elements)
    # The overall row compares the element mean with the total cut-off prorated to one element
    # (SRS: total < 36 <=> mean of 4 items < 9).
    per_el = n_el if p.total == "sum" else 1
    cutoffs = np.array([p.element_cutoff - eps] * n_el + [p.cutoff_total / per_el - eps])
    params = np.array(
        [
            eps,
            RUPTURE_FLOOR_FRACTION * p.scale_range,
            float(RUPTURE_MIN_HISTORY),
            p.element_cutoff - eps,
            p.scale_max - eps,
            p.drop_points / per_el - eps,
            YOUNG_AGE_YEARS,
        ]
    )
    plan = (registry, _sources(registry), cutoffs, params)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[id(registry)] = plan
    return plan[1], plan[2], plan[3]


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
    n = arrays.n_rows
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    n_out = rows.shape[0]
    out_t = np.empty((len(registry.features), n_out))  # C order: out_t.T is Fortran order
    if n_out and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"landmark rows must lie in 0..{n - 1}")
    # For each history row, the output rows it is the landmark of (CSR).
    if n_out == n and (n_out == 0 or (rows[0] == 0 and (np.diff(rows) == 1).all())):
        out_start, out_rows = np.arange(n + 1, dtype=np.int64), rows
    else:
        out_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=out_start[1:])
        out_rows = np.argsort(rows, kind="stable")
    src, cutoffs, params = _plan(registry)
    _kernel.fill(
        _c(arrays.session_number, np.int64), _c(arrays.day, np.int64),
        _c(arrays.attendance, np.int8), _c(arrays.ratings, np.float64),
        _c(arrays.offsets, np.int64), _c(arrays.intake_day, np.float64),
        _c(arrays.age, np.float64), cutoffs, params, _CODES, out_start, out_rows, src, out_t,
        len(profile.elements), n_out,
    )  # fmt: skip
    return out_t.T


def _c(values: Any, dtype: type) -> np.ndarray:
    """C-contiguous with ``dtype`` (no copy when it already is)."""
    return np.ascontiguousarray(values, dtype=dtype)
