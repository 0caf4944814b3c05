"""Clinician-language drivers: the top reasons behind a risk score, with the numbers behind them.

A driver is one explanation group (an alliance element, the overall alliance, attendance,
engagement or client covariates) among the ``top`` groups by |signed group contribution|. Its
sentence is chosen from the facts its largest same-signed feature contributions point at (a fall
over the last 3 rated sessions, an unrepaired rupture, a rating below the cut-off, 2 no-shows in
the last 3 appointments, ...) and filled with numbers from the raw history and the feature row.

The statistics themselves come from the feature row ``X`` (the registry is the one definition of
every feature); the raw history supplies only what a sentence quotes and no feature holds: which
rated sessions, at which session number, with which values. The one piece of feature logic
repeated here is the definition of a rated session and of the element mean at a session
(:mod:`features.kernels`), needed to quote overall-alliance values.

Texts carry session numbers, ratings, counts and day counts; never client ids or dates. Nothing is
logged.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from math import inf, isfinite, nan
from operator import add
from typing import Any, NamedTuple, TypeVar

import numpy as np

from features.arrays import MAX_SESSION_NUMBER, SessionArrays
from features.contract import ATTENDANCE_CODES, ATTENDED, LATE_CANCEL, NO_SHOW
from features.profiles import OVERALL, InstrumentProfile
from features.registry import (
    ATTENDANCE_GROUP,
    CLIENT_GROUP,
    ENGAGEMENT_GROUP,
    YOUNG_AGE_YEARS,
    FeatureRegistry,
)
from models.explain import Explanation

RAISES = "raises risk"
LOWERS = "lowers risk"

#: Labels of the non-element groups.
GROUP_LABELS: dict[str, str] = {
    OVERALL: "Overall alliance",
    ATTENDANCE_GROUP: "Attendance",
    ENGAGEMENT_GROUP: "Engagement",
    CLIENT_GROUP: "Client characteristics",
}
#: Focus for the overall alliance when no element has been rated yet: asking for feedback is
#: how ratings (and ruptures) become visible at all.
GENERAL_FOCUS = (
    "Keep communication open and transparent: ask for feedback on the session and "
    "name any strain directly."
)
#: "Steady" means the last 3 ratings span at most this fraction of the scale (1 point on 0-10),
#: twice the rupture floor of :mod:`features.registry`.
STEADY_FRACTION = 0.10
#: Rated sessions quoted by "over the last N rated sessions" sentences.
RECENT_RATED = 3
#: Appointments quoted by "in the last N appointments" sentences.
RECENT_APPOINTMENTS = 3

Evidence = dict[str, float | int | str | None]


@dataclass(frozen=True)
class Driver:
    """One reason behind a client's risk, in clinician language.

    Attributes
    ----------
    group : str
        Explanation group: an element name, ``alliance_overall``, ``attendance``,
        ``engagement`` or ``client``.
    label : str
        Clinician name of the group (the profile's element label, ``"Attendance"``, ...).
    contribution : float
        The group's signed contribution, in the explanation's space (log-odds).
    direction : str
        ``"raises risk"`` (contribution > 0) or ``"lowers risk"``.
    text : str
        One sentence with the numbers behind it, e.g. ``"2 no-shows in the last 3
        appointments"``. Ratings have 1 decimal, counts are integers.
    evidence : dict
        The numbers quoted by ``text`` (JSON-safe: int, float, str or None) and ``fact``, the
        kind of sentence (``trend``, ``rupture``, ``recent_missed``, ...). No dates, no ids.
    focus : str or None
        Alliance-building strategy for element groups and ``alliance_overall``; None otherwise.
    """

    group: str
    label: str
    contribution: float
    direction: str
    text: str
    evidence: Evidence
    focus: str | None


# ---------------------------------------------------------------------------------------------
# Formatting


# Ratings repeat across pairs and requests, and round() and float formatting cost several times a
# cache hit; the results depend on the value only (0.0 and -0.0, equal keys, give equal results).
_ROUNDED_KEPT = 4096


@lru_cache(maxsize=_ROUNDED_KEPT)
def _r1(x: float) -> str:
    """A rating with 1 decimal, never ``-0.0``."""
    # The string of f"{round(x, 1):.1f}" (both round the exact binary value half-even), and
    # "z" (PEP 682) turns a rounded -0.0 into 0.0; one call instead of three.
    return f"{x:z.1f}"


@lru_cache(maxsize=_ROUNDED_KEPT)
def _v(x: float) -> float:
    """A rating for the evidence: rounded as in the text."""
    return round(x, 1) + 0.0


@lru_cache(maxsize=_ROUNDED_KEPT)
def _rated(x: float) -> tuple[float, str]:
    """:func:`_v` and :func:`_r1` of ``x`` (the text of the rounded value) in one look-up."""
    return round(x, 1) + 0.0, f"{x:z.1f}"


def _n(count: int, singular: str, plural: str | None = None) -> str:
    """``1 no-show``, ``2 no-shows``."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _and(parts: list[str]) -> str:
    return " and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _finite(*xs: float) -> bool:
    return all(map(math.isfinite, xs))


# ---------------------------------------------------------------------------------------------
# Static tables per (registry, explanation groups), built once


@dataclass(frozen=True)
class _Group:
    """How one explanation group is described."""

    name: str
    kind: str  # element | overall | attendance | engagement | client | other
    label: str
    slot: int  # row in the rating arrays (rating groups), else -1
    cols: np.ndarray  # feature columns of the group
    col_list: tuple[int, ...]  # the same, as Python ints
    topics: tuple[tuple[str, ...], ...]  # per column: sentence kinds to try, in order
    focus: str | None
    subject: str  # how sentences name the group
    within: str  # how "no rupture in ..." names it
    verb: str  # "rated" for ratings, "was" for a summed total
    scale: float  # display factor: the element count for a summed total, else 1
    cutoff: float  # display-scale cut-off of the rating group (NaN otherwise)
    steady: float  # display-scale range counted as steady
    has_cutoff: bool  # cutoff is finite
    cutoff_r2: float  # cutoff as the evidence quotes it (2 decimals)
    cutoff_text: str  # cutoff as the text quotes it


_RATING_TOPICS: dict[str, tuple[str, ...]] = {
    "last": ("level",),
    "last3_mean": ("level",),
    "early_mean": ("early", "level"),
    "min": ("low_point", "level"),
    "slope": ("trend3", "first_last", "level"),
    "change_first": ("first_last", "trend3"),
    "change_prev": ("change_prev", "trend3"),
    "dev_own_mean": ("own_mean", "trend3"),
    "sd": ("variability",),
    "mssd": ("variability",),
    "ruptures_1sd": ("rupture",),
    "ruptures_2sd": ("rupture",),
    "has_rupture": ("rupture",),
    "unrepaired": ("rupture",),
    "sessions_since_rupture": ("rupture",),
    "n_rated": ("n_rated",),
    "below_cutoff": ("cutoff", "level"),
    "any_element_below_cutoff": ("element_cutoff", "level"),
    "ceiling_streak": ("ceiling",),
    "ceiling_flag": ("ceiling",),
    "drop_alert": ("drop_alert", "change_prev"),
}
_ATTENDANCE_TOPICS: dict[str, tuple[str, ...]] = {
    "attended_count": ("attended_share",),
    "attended_rate": ("attended_share",),
    "last_attended": ("streak", "attended_share"),
    "no_show_count": ("recent_missed", "attended_share"),
    "no_show_rate": ("recent_missed", "attended_share"),
    "late_cancel_count": ("recent_missed", "attended_share"),
    "late_cancel_rate": ("recent_missed", "attended_share"),
    "last_no_show": ("streak", "recent_missed"),
    "last_late_cancel": ("streak", "recent_missed"),
    "missed_streak": ("streak", "recent_missed"),
    "no_show_first3": ("first3",),
    "cancelled_count": ("cancellations",),
    "cancelled_rate": ("cancellations",),
    "last_cancelled": ("cancellations",),
    "rescheduled_count": ("cancellations",),
    "rescheduled_rate": ("cancellations",),
    "last_rescheduled": ("cancellations",),
    "gap_mean_days": ("gaps",),
    "gap_max_days": ("gaps",),
}
_ENGAGEMENT_TOPICS: dict[str, tuple[str, ...]] = {
    "landmark": ("landmark",),
    "days_since_intake": ("since_intake",),
    "days_since_attended": ("since_attended",),
    "never_attended": ("never_attended", "since_attended"),
    "never_rated": ("never_rated", "unrated"),
    "unrated_share": ("unrated",),
}
_TOPICS_BY_KIND: dict[str, dict[str, tuple[str, ...]]] = {
    "element": _RATING_TOPICS,
    "overall": _RATING_TOPICS,
    ATTENDANCE_GROUP: _ATTENDANCE_TOPICS,
    ENGAGEMENT_GROUP: _ENGAGEMENT_TOPICS,
    CLIENT_GROUP: {"age": ("age",), "age_under_25": ("age",)},
}
#: Sentences tried after the features' own, per group kind. The last of every chain always
#: succeeds, so only groups this module does not know reach the generic sentence.
_DEFAULT_TOPICS: dict[str, tuple[str, ...]] = {
    "element": ("trend3", "level", "n_rated"),
    "overall": ("trend3", "level", "n_rated"),
    ATTENDANCE_GROUP: ("recent_missed", "attended_share"),
    ENGAGEMENT_GROUP: ("landmark",),
    CLIENT_GROUP: ("age",),
    "other": (),
}

#: Feature statistics of rating groups read into the facts; rating-valued ones are rescaled for
#: display (see ``_Group.scale``).
_RATING_STATS = (
    "last3_mean",
    "early_mean",
    "min",
    "slope",
    "change_first",
    "change_prev",
    "dev_own_mean",
    "sd",
    "ruptures_1sd",
    "has_rupture",
    "unrepaired",
    "sessions_since_rupture",
    "below_cutoff",
    "any_element_below_cutoff",
    "ceiling_streak",
    "drop_alert",
)
_SCALED_STATS = frozenset(
    (
        "last3_mean",
        "early_mean",
        "min",
        "slope",
        "change_first",
        "change_prev",
        "dev_own_mean",
        "sd",
    )
)
_SCALED_FLAGS = tuple(s in _SCALED_STATS for s in _RATING_STATS)
_I_SINCE = _RATING_STATS.index("sessions_since_rupture")
#: Fact keys of the value and session number 0, 1, ... rated sessions back.
_BACK_KEYS = tuple((f"v{k}", f"sn{k}") for k in range(RECENT_RATED + 1))
_ACTIVITY_FEATURES = (
    "attendance_attended_count",
    "attendance_no_show_count",
    "attendance_late_cancel_count",
    "attendance_cancelled_count",
    "attendance_rescheduled_count",
    "attendance_no_show_first3",
    "attendance_missed_streak",
    "attendance_gap_mean_days",
    "attendance_gap_max_days",
    "engagement_days_since_intake",
    "engagement_days_since_attended",
    "engagement_never_attended",
    "engagement_never_rated",
    "engagement_unrated_share",
    "client_age",
)


class _RatingFacts(NamedTuple):
    """What the sentences of a rating-group pair may quote, on the display scale.

    A named tuple rather than a dict: a batch builds one per pair straight from the column
    lists, several times cheaper than a 35-key dict.
    """

    # Integers first, then floats: each kind is converted as one matrix (see _rows_of).
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
    # The feature row's _RATING_STATS, in that order (a test holds them equal).
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


class _ActivityFacts(NamedTuple):
    """What the sentences of an attendance, engagement or client pair may quote."""

    # Integers first, then floats, as in _RatingFacts.
    k: int  # appointments up to the landmark
    sn_now: int
    code_now: int  # attendance code of the landmark
    w_no_show: int  # no-shows and late cancellations in the last RECENT_APPOINTMENTS
    w_late: int
    # The feature row's _ACTIVITY_FEATURES, in that order (a test holds them equal).
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


_Facts = _RatingFacts | _ActivityFacts
#: Integer fields at the start of each facts tuple.
_INT_FIELDS = {_RatingFacts: 10, _ActivityFacts: 5}
_F = TypeVar("_F", _RatingFacts, _ActivityFacts)
#: Positions of ``v0, v1, ...`` and ``sn0, sn1, ...`` in :class:`_RatingFacts`.
_V_AT = tuple(_RatingFacts._fields.index(v) for v, _ in _BACK_KEYS)
_SN_AT = tuple(_RatingFacts._fields.index(sn) for _, sn in _BACK_KEYS)


@dataclass(frozen=True)
class _Tables:
    registry: FeatureRegistry
    group_names: tuple[str, ...]
    groups: tuple[_Group, ...]
    rating_stat_cols: np.ndarray  # (n_rating_groups, len(_RATING_STATS)), -1 = absent
    element_last_cols: np.ndarray  # (n_elements,), -1 = absent
    activity_cols: np.ndarray  # (len(_ACTIVITY_FEATURES),), -1 = absent
    group_slot: np.ndarray  # (n_groups,) rating slot per explanation group, -1 = not rating
    rating_stat_lists: list[list[int]]  # rating_stat_cols as Python lists
    element_last_list: list[int]  # element_last_cols as a Python list
    activity_list: list[int]  # activity_cols as a Python list
    group_scale: np.ndarray  # (n_groups,) display factor per explanation group
    group_cols: np.ndarray  # (n_groups, most columns of a group) feature columns, 0-padded
    group_pad: np.ndarray  # group_cols' shape: True where group_cols is padding
    code_base: int  # most columns of a group + 1: the base of the chain codes (see _chain)
    #: chain code -> sentences to try; filled as pairs are described.
    chains: dict[int, tuple[_Builder, ...]]


#: id(registry) -> tables; the registry is kept referenced so its id cannot be reused.
_TABLES: dict[int, _Tables] = {}


def _col(registry: FeatureRegistry, name: str) -> int:
    try:
        return registry.names.index(name)
    except ValueError:
        return -1


def group_label(profile: InstrumentProfile, group: str) -> str:
    """Clinician name of an explanation group: the element's label, or "Attendance", ..."""
    if group in profile.element_names:
        return profile.element(group).label
    return GROUP_LABELS.get(group, group.replace("_", " ").capitalize())


def _tables(registry: FeatureRegistry, group_names: tuple[str, ...]) -> _Tables:
    """Group descriptions and column lookups, cached per registry (hashing one costs ~50 us)."""
    cached = _TABLES.get(id(registry))
    if cached is not None and cached.registry is registry and cached.group_names == group_names:
        return cached
    profile = registry.profile
    n_el = len(profile.elements)
    slots = {g: i for i, g in enumerate(registry.rating_groups)}
    index = registry.index_of_group
    total_sum = profile.total == "sum"
    steady = STEADY_FRACTION * profile.scale_range
    groups: list[_Group] = []
    for name in group_names:
        if name not in index:
            raise ValueError(f"explanation group {name!r} is not in the feature registry")
        cols = index[name]
        if name in profile.element_names:
            element = profile.element(name)
            kind, label, focus = "element", element.label, element.focus
            subject, verb, scale, cutoff = label, "rated", 1.0, profile.element_cutoff
        elif name == OVERALL:
            kind, label, focus = "overall", GROUP_LABELS[OVERALL], None
            scale = float(n_el) if total_sum else 1.0
            subject = f"{label} total" if total_sum else label
            verb = "was" if total_sum else "rated"
            cutoff = profile.cutoff_total
        else:
            kind = name if name in _TOPICS_BY_KIND else "other"
            label = group_label(profile, name)
            focus, subject, verb, scale, cutoff = None, label, "", 1.0, math.nan
        table = _TOPICS_BY_KIND.get(kind, {})
        topics = tuple(table.get(registry.features[c].stat, ()) for c in cols.tolist())
        groups.append(
            _Group(
                name=name,
                kind=kind,
                label=label,
                slot=slots.get(name, -1),
                cols=cols,
                col_list=tuple(cols.tolist()),
                topics=topics,
                focus=focus,
                subject=subject,
                within="the overall alliance" if kind == "overall" else label,
                verb=verb,
                scale=scale,
                cutoff=cutoff,
                steady=steady * scale,
                has_cutoff=math.isfinite(cutoff),
                cutoff_r2=round(cutoff, 2),
                cutoff_text=_fmt(cutoff),
            )
        )
    stat_cols = [
        [_col(registry, f"{g}_{s}") for s in _RATING_STATS] for g in registry.rating_groups
    ]
    el_cols = [_col(registry, f"{e}_last") for e in profile.element_names]
    activity_cols = [_col(registry, f) for f in _ACTIVITY_FEATURES]
    widest = max((len(g.col_list) for g in groups), default=0)
    if len(groups) * (widest + 1) ** _CANDIDATES >= 2**63:
        raise ValueError("an explanation group has too many features to code its sentence chains")
    # At least one (padding) column, so that every pair has something to take the argmax of.
    group_cols = np.full((len(groups), max(widest, 1)), -1, dtype=np.int64)
    for gi, g in enumerate(groups):
        group_cols[gi, : len(g.col_list)] = g.col_list
    tables = _Tables(
        registry=registry,
        group_names=group_names,
        groups=tuple(groups),
        rating_stat_cols=np.array(stat_cols, dtype=np.int64).reshape(n_el + 1, len(_RATING_STATS)),
        element_last_cols=np.array(el_cols, dtype=np.int64),
        activity_cols=np.array(activity_cols, dtype=np.int64),
        rating_stat_lists=stat_cols,
        element_last_list=el_cols,
        activity_list=activity_cols,
        group_slot=np.array([g.slot for g in groups], dtype=np.int64),
        group_scale=np.array([g.scale for g in groups], dtype=np.float64),
        group_cols=np.maximum(group_cols, 0),
        group_pad=group_cols < 0,
        code_base=widest + 1,
        chains={},
    )
    _TABLES[id(registry)] = tables
    return tables


def _gather(X: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``X[rows, cols.T].T``: per column (of shape (k,) or (k, n_rows)), its values in ``rows``,
    with NaN where the column is -1 (absent from the registry)."""
    if cols.ndim == 1:
        cols = cols[:, None]
    # A flat take of column-major X (as the feature kernels build it, so ravel is a view) costs
    # a fraction of 2-d fancy indexing.
    out = np.take(X.ravel(order="F"), np.maximum(cols, 0) * X.shape[0] + rows)
    absent = cols < 0
    if absent.any():
        out[np.broadcast_to(absent, out.shape)] = np.nan
    return out


def _rows_of(cls: type[_F], columns: dict[str, np.ndarray]) -> list[_F]:
    """Column arrays, one per field of ``cls`` -> one ``cls`` of Python scalars per pair."""
    n_int = _INT_FIELDS[cls]
    fields = cls._fields
    n = columns[fields[0]].shape[0]
    # Two matrices converted row by row in C cost far less than one list per column zipped;
    # filled field by field (contiguous rows), then read transposed.
    ints = np.empty((n_int, n), dtype=np.int64)
    floats = np.empty((len(fields) - n_int, n))
    for j, name in enumerate(fields[:n_int]):
        ints[j] = columns[name]
    for j, name in enumerate(fields[n_int:]):
        floats[j] = columns[name]
    return list(map(tuple.__new__, repeat(cls), map(add, ints.T.tolist(), floats.T.tolist())))


# ---------------------------------------------------------------------------------------------
# Facts, vectorised over the chosen (row, group) pairs


_ATT = ATTENDANCE_CODES.index(ATTENDED)
_NO_SHOW = ATTENDANCE_CODES.index(NO_SHOW)
_LATE = ATTENDANCE_CODES.index(LATE_CANCEL)
_CODE_TEXT = ("attended", "no-show", "late cancellation", "cancelled", "rescheduled")


def _rating_facts(
    arrays: SessionArrays,
    at: np.ndarray,
    X: np.ndarray,
    xrow: np.ndarray,
    slot: np.ndarray,
    scale: np.ndarray,
    t: _Tables,
) -> list[_RatingFacts]:
    """Facts of rating-group pairs: landmark row ``at``, feature row ``xrow``, rating ``slot``."""
    n_el = len(arrays.profile.elements)
    n = arrays.n_rows
    sn = arrays.session_number
    # A rated session is attended with the value finite; the element mean averages the rated
    # elements in profile order (features.kernels, so values quoted here match the features).
    rated = np.empty((n_el + 1, n), dtype=bool)
    np.logical_and(np.isfinite(arrays.ratings), arrays.attendance == _ATT, out=rated[:n_el])
    zeroed = np.where(rated[:n_el], arrays.ratings, 0.0)
    total = zeroed[0].copy()
    for e in range(1, n_el):
        total += zeroed[e]
    n_rated_el = rated[:n_el].sum(axis=0)
    rated[n_el] = n_rated_el > 0
    # The value per (slot, row), read only where rated: there the raw rating is the value.
    vflat = np.empty((n_el + 1) * n)
    vflat[: n_el * n] = arrays.ratings.ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(total, n_rated_el, out=vflat[n_el * n :])
    flat = rated.ravel()
    csum = np.zeros(flat.shape[0] + 1, dtype=np.int64)
    np.cumsum(flat, out=csum[1:])
    pos = np.flatnonzero(flat)
    if pos.shape[0] == 0:
        pos = np.zeros(1, dtype=np.int64)  # every count is 0 below, so it is never read

    seg = arrays.seg_of_row[at]
    base = slot * n
    c_end = csum[base + at + 1]
    c_start = csum[base + arrays.offsets[seg]]
    m = c_end - c_start
    back = np.arange(RECENT_RATED + 1, dtype=np.int64)[:, None]
    valid = back < m
    fp = pos[np.where(valid, c_end - 1 - back, 0)]
    vals = np.where(valid, vflat[fp], np.nan) * scale
    sns = np.where(valid, sn[np.clip(fp - base, 0, n - 1)], -1)
    first_fp = pos[np.where(m > 0, c_start, 0)]
    first = np.where(m > 0, vflat[first_fp], np.nan) * scale
    first_sn = np.where(m > 0, sn[np.clip(first_fp - base, 0, n - 1)], -1)
    recent = vals[:RECENT_RATED]
    with np.errstate(invalid="ignore"):
        spread = np.fmax.reduce(recent, axis=0) - np.fmin.reduce(recent, axis=0)

    stats = _gather(X, xrow, t.rating_stat_cols[slot].T)
    for j, s in enumerate(_RATING_STATS):
        if s in _SCALED_STATS:
            stats[j] *= scale

    # The rupture: its row from the session number the feature row gives, then the rated value
    # before it (the level it dropped from) and the value at it.
    since = stats[_I_SINCE]
    has = np.isfinite(since)
    rup_sn = np.where(has, sn[at] - np.where(has, since, 0.0), 0).astype(np.int64)
    key = arrays.seg_of_row * (MAX_SESSION_NUMBER + 1) + sn
    rup_row = np.minimum(np.searchsorted(key, seg * (MAX_SESSION_NUMBER + 1) + rup_sn), n - 1)
    rup_fp = base + rup_row
    has &= (key[rup_row] == seg * (MAX_SESSION_NUMBER + 1) + rup_sn) & flat[rup_fp]
    has &= csum[rup_fp] > c_start  # a rated value before it, in the same client and group
    before = np.where(has, vflat[pos[np.maximum(csum[rup_fp] - 1, 0)]], np.nan) * scale
    at_rup = np.where(has, vflat[rup_fp], np.nan) * scale

    # Overall alliance only: the lowest element at its last rated session, and the element
    # with the lowest latest rating (whose strategy becomes the focus).
    overall = slot == n_el
    last_row = np.where(m > 0, np.clip(fp[0] - base, 0, n - 1), 0)
    # (The last rated session of a pair is attended, so its finite ratings are its rated ones.)
    el_values = arrays.ratings[:, last_row]
    el_values = np.where(np.isfinite(el_values), el_values, np.inf)
    low_el = np.where(overall & (m > 0), np.argmin(el_values, axis=0), -1)
    low_val = np.where(overall & (m > 0), np.min(el_values, axis=0), np.nan)
    el_last = _gather(X, xrow, t.element_last_cols)
    el_last = np.where(np.isnan(el_last), np.inf, el_last)
    any_last = overall & np.isfinite(el_last).any(axis=0)
    focus_el = np.where(any_last, np.argmin(el_last, axis=0), -1)

    columns: dict[str, np.ndarray] = {"m": m, "sn_now": sn[at]}
    for k in range(RECENT_RATED + 1):
        columns[f"v{k}"] = vals[k]
        columns[f"sn{k}"] = sns[k]
    columns |= {
        "first": first,
        "first_sn": first_sn,
        "spread": spread,
        "rup_sn": np.where(has, rup_sn, -1),
        "rup_before": before,
        "rup_at": at_rup,
        "low_el": low_el,
        "low_val": low_val,
        "focus_el": focus_el,
    }
    columns |= {s: stats[j] for j, s in enumerate(_RATING_STATS)}
    return _rows_of(_RatingFacts, columns)


def _activity_facts(
    arrays: SessionArrays, at: np.ndarray, X: np.ndarray, xrow: np.ndarray, t: _Tables
) -> list[_ActivityFacts]:
    """Facts of attendance, engagement and client pairs at landmark rows ``at``."""
    att = arrays.attendance
    rank = arrays.rank[at]
    window = np.empty((RECENT_APPOINTMENTS, at.shape[0]), dtype=np.int8)
    for j in range(RECENT_APPOINTMENTS):
        window[j] = np.where(rank >= j, att[np.maximum(at - j, 0)], -1)
    columns: dict[str, np.ndarray] = {
        "k": rank + 1,
        "sn_now": arrays.session_number[at],
        "code_now": att[at],
    }
    for name, code in (
        ("w_no_show", _NO_SHOW),
        ("w_late", _LATE),
    ):
        columns[name] = (window == code).sum(axis=0)
    stats = _gather(X, xrow, t.activity_cols)
    columns |= {f: stats[j] for j, f in enumerate(_ACTIVITY_FEATURES)}
    if t.activity_cols[_ACTIVITY_FEATURES.index("client_age")] < 0:
        columns["client_age"] = arrays.age[arrays.seg_of_row[at]]
    return _rows_of(_ActivityFacts, columns)


class _History:
    """One client's rated values up to a landmark row, per rating slot, worked out on demand."""

    def __init__(self, arrays: SessionArrays, r: int) -> None:
        self.seg = int(arrays.seg_of_row[r])
        a = int(arrays.offsets[self.seg])
        self.sn: list[int] = arrays.session_number[a : r + 1].tolist()
        self.codes: list[int] = arrays.attendance[a : r + 1].tolist()
        self.attended = [c == _ATT for c in self.codes]
        self._arrays, self._a, self._b = arrays, a, r + 1
        self._ratings: list[list[float]] | None = None
        self._slots: dict[int, tuple[list[float], list[int]]] = {}

    @property
    def ratings(self) -> list[list[float]]:
        """Per element, the raw ratings (NaN where missing)."""
        if self._ratings is None:
            self._ratings = self._arrays.ratings[:, self._a : self._b].tolist()
        return self._ratings

    def slot(self, g: int) -> tuple[list[float], list[int]]:
        """Rating slot ``g``: its value per session (NaN if not rated) and the rated positions."""
        got = self._slots.get(g)
        if got is None:
            if g < len(self.ratings):
                values = [
                    v if ok and isfinite(v) else nan
                    for v, ok in zip(self.ratings[g], self.attended, strict=True)
                ]
            else:
                values = self._element_mean()
            got = self._slots[g] = (values, [j for j, v in enumerate(values) if v == v])
        return got

    def _element_mean(self) -> list[float]:
        # The element mean exactly as features.kernels sums it: unrated elements add 0.0, in
        # profile order (starting from -0.0, the exact identity of float addition).
        out = []
        for ok, column in zip(self.attended, zip(*self.ratings, strict=True), strict=True):
            total, count = -0.0, 0
            if ok:
                for v in column:
                    if isfinite(v):
                        total += v
                        count += 1
                    else:
                        total += 0.0
            out.append(total / count if count else nan)
        return out


def _rating_facts_small(
    arrays: SessionArrays,
    at: list[int],
    X: list[list[float]],
    xrow: list[int],
    slot: list[int],
    scale: list[float],
    t: _Tables,
    histories: dict[int, _History],
) -> list[_RatingFacts]:
    """:func:`_rating_facts` in plain Python for a few pairs (numpy's per-call overhead), with
    ``X`` as lists and ``histories`` shared by landmark row."""
    n_el = len(arrays.profile.elements)
    stat_cols, el_cols = t.rating_stat_lists, t.element_last_list
    out: list[_RatingFacts] = []
    for r, i, g, s in zip(at, xrow, slot, scale, strict=True):
        hist = histories.get(r)
        if hist is None:
            hist = histories[r] = _History(arrays, r)
        sn = hist.sn
        vals, idx = hist.slot(g)
        xl = X[i]
        m = len(idx)
        back_v: list[float] = []
        back_sn: list[int] = []
        for k in range(RECENT_RATED + 1):
            if k < m:
                back_v.append(vals[idx[m - 1 - k]] * s)
                back_sn.append(sn[idx[m - 1 - k]])
            else:
                back_v.append(nan)
                back_sn.append(-1)
        recent = back_v[: min(m, RECENT_RATED)]
        stats = [
            nan if c < 0 else xl[c] * s if sc else xl[c]
            for c, sc in zip(stat_cols[g], _SCALED_FLAGS, strict=True)
        ]
        since = stats[_I_SINCE]
        rup_sn, rup_before, rup_at = -1, nan, nan
        if isfinite(since):
            rsn = int(sn[-1] - since)
            j = bisect_left(sn, rsn)
            q = bisect_left(idx, j)
            if j < len(sn) and sn[j] == rsn and q < m and idx[q] == j and q > 0:
                rup_sn, rup_before, rup_at = rsn, vals[idx[q - 1]] * s, vals[j] * s
        low_el, low_val, focus_el = -1, nan, -1
        if g == n_el:
            if m:
                els = [v if isfinite(v) else inf for v in (e[idx[-1]] for e in hist.ratings)]
                low_val = min(els)
                low_el = els.index(low_val)
            lasts = [xl[c] if c >= 0 else nan for c in el_cols]
            lasts = [v if v == v else inf for v in lasts]
            if any(v != inf for v in lasts):
                focus_el = lasts.index(min(lasts))
        out.append(
            _RatingFacts._make(
                [
                    m,
                    sn[-1],
                    *back_sn,
                    sn[idx[0]] if m else -1,
                    rup_sn,
                    low_el,
                    focus_el,
                    *back_v,
                    vals[idx[0]] * s if m else nan,
                    max(recent) - min(recent) if recent else nan,
                    rup_before,
                    rup_at,
                    low_val,
                    *stats,
                ]
            )
        )
    return out


def _activity_facts_small(
    arrays: SessionArrays,
    at: list[int],
    X: list[list[float]],
    xrow: list[int],
    t: _Tables,
    histories: dict[int, _History],
) -> list[_ActivityFacts]:
    """:func:`_activity_facts` in plain Python, for a few pairs (as :func:`_rating_facts_small`)."""
    cols = t.activity_list
    no_age = cols[_ACTIVITY_FEATURES.index("client_age")] < 0
    out: list[_ActivityFacts] = []
    for r, i in zip(at, xrow, strict=True):
        hist = histories.get(r)
        if hist is None:
            hist = histories[r] = _History(arrays, r)
        window = hist.codes[-RECENT_APPOINTMENTS:]
        xl = X[i]
        f = _ActivityFacts(
            len(hist.codes),
            hist.sn[-1],
            window[-1],
            window.count(_NO_SHOW),
            window.count(_LATE),
            *[xl[c] if c >= 0 else nan for c in cols],
        )
        if no_age:
            f = f._replace(client_age=float(arrays.age[hist.seg]))
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------
# Sentences. Each returns (text, evidence) or None when its facts are absent or do not support
# the group's direction; the next candidate is tried then.

Sentence = tuple[str, Evidence] | None


def _trend(f: _RatingFacts, g: _Group, up: bool, span: int, fact: str) -> Sentence:
    m = f.m
    if m < 2:
        return None
    k = span if span < m else m - 1
    old, new = f[_V_AT[k]], f.v0
    if not (isfinite(old) and isfinite(new)):
        return None
    (a, a_text), (b, b_text) = _rated(old), _rated(new)
    if up != (b < a):
        return None
    over = "since the previous rated session" if k == 1 else f"over the last {k} rated sessions"
    if b < a:
        text = f"{g.subject} fell from {a_text} to {b_text} {over}"
    elif b > a:
        text = f"{g.subject} rose from {a_text} to {b_text} {over}"
    else:
        text = f"{g.subject} held steady at {b_text} {over}"
    ev: Evidence = {
        "fact": fact,
        "from": a,
        "to": b,
        "from_session": f[_SN_AT[k]],
        "to_session": f.sn0,
        "rated_sessions": k,
    }
    return text, ev


def _first_last(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    first, last = f.first, f.v0
    if f.m < 2 or not (isfinite(first) and isfinite(last)):
        return None
    a, b = _v(first), _v(last)
    if up != (b < a):
        return None
    if b != a:
        verb = "fell" if b < a else "rose"
        text = (
            f"{g.subject} {verb} from {a:.1f} at session {f.first_sn} to {b:.1f} at session {f.sn0}"
        )
    else:
        text = f"{g.subject} held steady at {b:.1f} from session {f.first_sn} to session {f.sn0}"
    ev: Evidence = {
        "fact": "first_to_last",
        "from": a,
        "to": b,
        "from_session": f.first_sn,
        "to_session": f.sn0,
        "rated_sessions": f.m,
    }
    return text, ev


def _level(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    m, last = f.m, f.v0
    if m < 1 or not isfinite(last):
        return None
    s = f.sn0
    n3 = m if m < RECENT_RATED else RECENT_RATED
    mean3 = f.last3_mean
    if not isfinite(mean3):
        mean3 = last
    lv, lv_text = _rated(last)
    ev: Evidence = {"fact": "level", "latest": lv, "session": s}
    if n3 > 1:
        mv, mv_text = _rated(mean3)
        ev["recent_mean"] = mv
        ev["rated_sessions"] = n3
    if g.has_cutoff:
        ev["cutoff"] = g.cutoff_r2
        if not up and mean3 >= g.cutoff:
            spread = f.spread
            steady = n3 > 1 and isfinite(spread) and spread <= g.steady + 1e-9
            quality = "high and steady" if steady else "high"
            if n3 > 1:
                return (
                    f"{g.subject} {g.verb} {quality} ({mv_text} over the last {n3} rated sessions)",
                    ev,
                )
            return f"{g.subject} {g.verb} {quality} ({_r1(mean3)} at session {s})", ev
    if up and f.below_cutoff == 1:
        return (
            f"{g.subject} {g.verb} {lv_text} at session {s}, below the cut-off {g.cutoff_text}",
            ev,
        )
    if n3 > 1:
        text = (
            f"{g.subject} {g.verb} {lv_text} at session {s} "
            f"(mean {mv_text} over the last {n3} rated sessions)"
        )
        return text, ev
    return f"{g.subject} {g.verb} {lv_text} at session {s}", ev


def _cutoff(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    last = f.v0
    if f.m < 1 or not (isfinite(last) and g.has_cutoff):
        return None
    below = f.below_cutoff == 1
    if up != below:
        return None
    where = "below" if below else "at or above"
    lv = _v(last)
    text = f"{g.subject} {g.verb} {lv:.1f} at session {f.sn0}, {where} the cut-off {g.cutoff_text}"
    ev: Evidence = {
        "fact": "cutoff",
        "latest": lv,
        "session": f.sn0,
        "cutoff": g.cutoff_r2,
        "below_cutoff": int(below),
    }
    return text, ev


def _own_mean(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    dev, last = f.dev_own_mean, f.v0
    if f.m < 2 or not (isfinite(dev) and isfinite(last)):
        return None
    lv, mv = _v(last), _v(last - dev)
    below = lv < mv
    if up != below:
        return None
    ev: Evidence = {"fact": "own_mean", "latest": lv, "session": f.sn0, "own_mean": mv}
    if below:
        return (
            f"{g.subject} {g.verb} {lv:.1f} at session {f.sn0}, {_r1(mv - lv)} below this "
            f"client's own average of {mv:.1f}",
            ev,
        )
    return (
        f"{g.subject} {g.verb} {lv:.1f} at session {f.sn0}, at or above this client's own "
        f"average of {mv:.1f}",
        ev,
    )


def _early(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    e = f.early_mean
    if not isfinite(e):
        return None
    ev_mean, mean_text = _rated(e)
    text = f"{g.subject} averaged {mean_text} in appointments 1-3"
    ev: Evidence = {"fact": "early", "early_mean": ev_mean}
    if g.has_cutoff:
        ev["cutoff"] = g.cutoff_r2
        if up and e < g.cutoff:
            text += f", below the cut-off {g.cutoff_text}"
        elif not up and e >= g.cutoff:
            text += " (a good early alliance)"
    return text, ev


def _low_point(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    lo, last = f.min, f.v0
    if not up or f.m < 1 or not (isfinite(lo) and isfinite(last)):
        return None
    lov, lv = _v(lo), _v(last)
    ev: Evidence = {"fact": "low_point", "lowest": lov, "latest": lv}
    if lov >= lv:
        return f"{g.subject} at its lowest so far: {lv:.1f} at session {f.sn0}", ev
    return f"{g.subject} reached a low of {lov:.1f} (latest {lv:.1f})", ev


def _variability(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    sd, m = f.sd, f.m
    if m < 2 or not isfinite(sd):
        return None
    # An SD of at most half the "steady" range (0.5 points on 0-10, the rupture floor) is stable.
    stable = sd <= 0.5 * g.steady + 1e-9
    if up == stable:
        return None
    quality = "stable" if stable else "unstable"
    sv = _v(sd)
    text = f"{g.subject} ratings {quality} (SD {sv:.1f} points over {m} rated sessions)"
    return text, {"fact": "variability", "sd": sv, "rated_sessions": m}


def _rupture(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    m, rup_sn = f.m, f.rup_sn
    n_rup = int(f.ruptures_1sd) if isfinite(f.ruptures_1sd) else 0
    if f.has_rupture == 1 and rup_sn > 0 and _finite(f.rup_before, f.rup_at, f.v0):
        drop = f"dropped from {_r1(f.rup_before)} to {_r1(f.rup_at)}"
        unrepaired = f.unrepaired == 1
        ev: Evidence = {
            "fact": "rupture",
            "session": rup_sn,
            "from": _v(f.rup_before),
            "to": _v(f.rup_at),
            "latest": _v(f.v0),
            "ruptures": n_rup,
            "repaired": int(not unrepaired),
        }
        if unrepaired:
            if not up:
                return None
            latest = "" if f.sn0 == rup_sn else f", latest {_r1(f.v0)}"
            return f"{g.label} rupture at session {rup_sn} not yet repaired ({drop}{latest})", ev
        if up:
            more = f"; {n_rup} ruptures so far" if n_rup > 1 else ""
            return f"{g.label} rupture at session {rup_sn} ({drop}), since repaired{more}", ev
        return (
            f"{g.label} rupture at session {rup_sn} was repaired ({drop}, latest {_r1(f.v0)})",
            ev,
        )
    if f.has_rupture == 0 and m >= 2 and not up:
        return f"No rupture in {g.within} over {m} rated sessions", {
            "fact": "rupture",
            "ruptures": 0,
            "rated_sessions": m,
        }
    return None


def _n_rated(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    m = f.m
    if m == 0:
        return f"{g.label} not rated yet", {"fact": "n_rated", "rated_sessions": 0}
    return f"{g.label} rated in {_n(m, 'session')} so far", {"fact": "n_rated", "rated_sessions": m}


def _element_cutoff(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    profile = t.registry.profile
    flag = f.any_element_below_cutoff
    if f.m < 1 or not isfinite(flag) or up != (flag == 1):
        return None
    cut = round(profile.element_cutoff, 2)
    if flag == 1 and f.low_el >= 0 and isfinite(f.low_val):
        element = profile.elements[f.low_el]
        text = (
            f"{element.label} rated {_r1(f.low_val)} at session {f.sn0}, below the element "
            f"cut-off {_fmt(cut)}"
        )
        ev: Evidence = {
            "fact": "element_cutoff",
            "element": element.name,
            "latest": _v(f.low_val),
            "session": f.sn0,
            "cutoff": cut,
        }
        return text, ev
    if flag == 0:
        return f"Every element rated at or above {_fmt(cut)} at session {f.sn0}", {
            "fact": "element_cutoff",
            "session": f.sn0,
            "cutoff": cut,
        }
    return None


def _ceiling(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    streak = f.ceiling_streak
    if not up or not isfinite(streak) or streak < 1:
        return None
    n = int(streak)
    top = _fmt(t.registry.profile.scale_max)
    where = f"in the last {n} rated sessions" if n > 1 else f"at session {f.sn0}"
    return f"Perfect scores ({top} on every element) {where}, a known warning sign", {
        "fact": "ceiling",
        "rated_sessions": n,
        "scale_max": t.registry.profile.scale_max,
    }


def _drop_alert(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    if not up or f.drop_alert != 1 or not _finite(f.v0, f.v1):
        return None
    d = _v(f.v1) - _v(f.v0)
    text = (
        f"{g.subject} fell by {_r1(d)} points since the previous rated session "
        f"(from {_r1(f.v1)} to {_r1(f.v0)})"
    )
    ev: Evidence = {
        "fact": "drop_alert",
        "from": _v(f.v1),
        "to": _v(f.v0),
        "from_session": f.sn1,
        "to_session": f.sn0,
    }
    return text, ev


# -- attendance, engagement, client ------------------------------------------------------------


@lru_cache(maxsize=_ROUNDED_KEPT)
def _int(x: float) -> int:
    return int(round(x)) if isfinite(x) else 0


def _misses(no_show: int, late: int) -> str:
    parts = []
    if no_show:
        parts.append(_n(no_show, "no-show"))
    if late:
        parts.append(_n(late, "late cancellation"))
    return _and(parts)


def _recent_missed(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    k, ns, lc = f.k, f.w_no_show, f.w_late
    tot_ns = _int(f.attendance_no_show_count)
    tot_lc = _int(f.attendance_late_cancel_count)
    window = (
        f"in the last {RECENT_APPOINTMENTS} appointments"
        if k >= RECENT_APPOINTMENTS
        else f"in {_n(k, 'appointment')} so far"
    )
    ev: Evidence = {
        "fact": "recent_missed",
        "no_shows": ns,
        "late_cancellations": lc,
        "appointments": min(k, RECENT_APPOINTMENTS),
        "no_shows_total": tot_ns,
        "late_cancellations_total": tot_lc,
        "appointments_total": k,
    }
    if up:
        if ns + lc > 0:
            return f"{_misses(ns, lc)} {window}", ev
        if tot_ns + tot_lc > 0:
            return (
                f"{_misses(tot_ns, tot_lc)} in {_n(k, 'appointment')} so far, "
                f"none in the last {RECENT_APPOINTMENTS}",
                ev,
            )
        return None
    if ns + lc > 0:
        return None
    if tot_ns + tot_lc == 0:
        return f"No no-shows or late cancellations in {_n(k, 'appointment')} so far", ev
    return f"No no-shows or late cancellations {window} ({_misses(tot_ns, tot_lc)} earlier)", ev


def _streak(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    s = _int(f.attendance_missed_streak)
    ev: Evidence = {"fact": "missed_streak", "missed_in_a_row": s, "session": f.sn_now}
    if up and s == 1:
        return (
            f"Missed the latest appointment (session {f.sn_now}, {_CODE_TEXT[f.code_now]})",
            ev,
        )
    if up and s > 1:
        return f"Missed the last {s} appointments in a row (no-shows or late cancellations)", ev
    if not up and s == 0 and f.code_now == _ATT:
        return f"Attended the latest appointment (session {f.sn_now})", ev
    return None


def _first3(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    n = _int(f.attendance_no_show_first3)
    ev: Evidence = {"fact": "no_show_first3", "no_shows": n}
    if up and n > 0:
        return f"{_n(n, 'no-show')} among appointments 1-3", ev
    if not up and n == 0:
        return "No no-shows among appointments 1-3", ev
    return None


def _attended_share(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    k, a = f.k, _int(f.attendance_attended_count)
    pct = round(100 * a / k)
    return f"Attended {a} of {_n(k, 'appointment')} ({pct}%)", {
        "fact": "attended_share",
        "attended": a,
        "appointments": k,
        "percent": pct,
    }


def _cancellations(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    c = _int(f.attendance_cancelled_count)
    r = _int(f.attendance_rescheduled_count)
    ev: Evidence = {
        "fact": "cancellations",
        "cancelled": c,
        "rescheduled": r,
        "appointments": f.k,
    }
    if up and c + r > 0:
        parts = [_n(c, "cancelled appointment")] if c else []
        parts += [_n(r, "rescheduled appointment")] if r else []
        return f"{_and(parts)} so far", ev
    if not up and c + r == 0:
        return "No cancelled or rescheduled appointments so far", ev
    return None


def _gaps(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    gmax, gmean = f.attendance_gap_max_days, f.attendance_gap_mean_days
    if f.k < 2 or not _finite(gmax, gmean):
        return None
    return (
        f"Longest gap between appointments {_n(_int(gmax), 'day')} (mean {_n(_int(gmean), 'day')})",
        {
            "fact": "gaps",
            "gap_max_days": _int(gmax),
            "gap_mean_days": _int(gmean),
        },
    )


def _landmark(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    sn = f.sn_now
    ev: Evidence = {"fact": "landmark", "session": sn}
    if sn <= RECENT_APPOINTMENTS:
        return f"Early in therapy: appointment {sn}", ev
    return f"Appointment {sn} of the episode", ev


def _since_intake(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    d = f.engagement_days_since_intake
    if not isfinite(d):
        return None
    days = _int(d)
    return f"{_n(days, 'day')} since intake ({_n(f.k, 'appointment')})", {
        "fact": "days_since_intake",
        "days": days,
        "appointments": f.k,
    }


def _since_attended(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    d = f.engagement_days_since_attended
    if not isfinite(d):
        return _never_attended(f, g, up, t)
    days = _int(d)
    ev: Evidence = {"fact": "days_since_attended", "days": days, "session": f.sn_now}
    if days == 0:
        return f"Attended the latest appointment (session {f.sn_now})", ev
    return f"{_n(days, 'day')} since the last attended session", ev


def _never_attended(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    if f.engagement_never_attended != 1:
        return None
    return f"No appointment attended yet ({_n(f.k, 'appointment')} scheduled)", {
        "fact": "never_attended",
        "appointments": f.k,
    }


def _never_rated(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    if f.engagement_never_rated != 1:
        return None
    a = _int(f.attendance_attended_count)
    attended = _n(a, "attended session") if a else "no session attended"
    return f"No alliance rating recorded yet ({attended})", {
        "fact": "never_rated",
        "attended": a,
    }


def _unrated(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    share, a = f.engagement_unrated_share, _int(f.attendance_attended_count)
    if not isfinite(share) or a < 1:
        return None
    u = _int(share * a)
    ev: Evidence = {"fact": "unrated", "unrated": u, "attended": a}
    if up and u > 0:
        return f"{u} of {_n(a, 'attended session')} without an alliance rating", ev
    if not up and u == 0:
        every = "the 1 attended session" if a == 1 else f"all {a} attended sessions"
        return f"Alliance rated at {every}", ev
    return None


def _age(f: _ActivityFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    age = f.client_age
    if not isfinite(age):
        return "Client age not recorded", {"fact": "age", "age_years": None}
    young = age < YOUNG_AGE_YEARS
    text = f"Client {'younger than' if young else 'aged at least'} {_fmt(YOUNG_AGE_YEARS)} years"
    return text, {"fact": "age", "age_years": int(age)}


_Builder = Callable[[Any, _Group, bool, _Tables], Sentence]


def _trend3(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    return _trend(f, g, up, RECENT_RATED, "trend")


def _change_prev(f: _RatingFacts, g: _Group, up: bool, t: _Tables) -> Sentence:
    return _trend(f, g, up, 1, "change_prev")


_BUILDERS: dict[str, _Builder] = {
    "trend3": _trend3,
    "change_prev": _change_prev,
    "first_last": _first_last,
    "level": _level,
    "cutoff": _cutoff,
    "own_mean": _own_mean,
    "early": _early,
    "low_point": _low_point,
    "variability": _variability,
    "rupture": _rupture,
    "n_rated": _n_rated,
    "element_cutoff": _element_cutoff,
    "ceiling": _ceiling,
    "drop_alert": _drop_alert,
    "recent_missed": _recent_missed,
    "streak": _streak,
    "first3": _first3,
    "attended_share": _attended_share,
    "cancellations": _cancellations,
    "gaps": _gaps,
    "landmark": _landmark,
    "since_intake": _since_intake,
    "since_attended": _since_attended,
    "never_attended": _never_attended,
    "never_rated": _never_rated,
    "unrated": _unrated,
    "age": _age,
}

#: Same-signed features tried per driver before the group's default sentences.
_CANDIDATES = 4


#: Most sentence chains kept per tables (distinct (group, candidates) codes are few in practice).
_CHAINS_MAX = 4096


def _chain_code(t: _Tables, gi: int, candidates: list[int]) -> int:
    """Group ``gi`` and its candidate columns (positions in the group, at most _CANDIDATES) as one
    integer: the digits, base ``t.code_base``, are the group, then each candidate + 1, 0 padded."""
    code = gi
    for j in range(_CANDIDATES):
        code = code * t.code_base + (candidates[j] + 1 if j < len(candidates) else 0)
    return code


def _chain(t: _Tables, code: int) -> tuple[_Builder, ...]:
    """Sentences to try for the pair coded ``code`` (:func:`_chain_code`): its candidate features'
    topics, then the group's defaults, each once, in that order."""
    chain = t.chains.get(code)
    if chain is None:
        rest, digits = code, []
        for _ in range(_CANDIDATES):
            rest, digit = divmod(rest, t.code_base)
            digits.append(digit)
        g = t.groups[rest]
        topics = [topic for d in reversed(digits) if d for topic in g.topics[d - 1]]
        chain = tuple(
            _BUILDERS[topic] for topic in dict.fromkeys(topics + [*_DEFAULT_TOPICS[g.kind]])
        )
        if len(t.chains) < _CHAINS_MAX:
            t.chains[code] = chain
    return chain


def _generic(g: _Group, contribution: float) -> tuple[str, Evidence]:
    """The sentence when no sentence of the group's chain is supported by its facts."""
    return (
        f"{g.label} contributes {contribution:+.2f} to the risk (log-odds)",
        {"fact": "contribution", "contribution": round(contribution, 2)},
    )


# ---------------------------------------------------------------------------------------------
# Choosing the (row, group) pairs, their candidate features and their facts. Both paths give the
# same result; the small one (a client on the API path) avoids numpy's per-call overhead.

#: Up to this many (row, group) pairs, the plain-Python path is faster.
_SMALL_PAIRS = 24

#: Per (row, group) pair: the row, the group, its contribution, its sentence chain, its facts.
_Pairs = tuple[list[int], list[int], list[float], list[tuple[_Builder, ...]], list[_Facts]]


def _pairs_small(
    arrays: SessionArrays,
    rows: np.ndarray,
    X: np.ndarray,
    gc: np.ndarray,
    fc: np.ndarray,
    k: int,
    t: _Tables,
) -> _Pairs:
    pair_row: list[int] = []
    pair_group: list[int] = []
    pair_c: list[float] = []
    chains: list[tuple[_Builder, ...]] = []
    phis = fc.tolist()
    for i, contributions in enumerate(gc.tolist()):
        # Sorted by -|c| (stable, so ties keep group order), as np.argsort(kind="stable").
        key = [-abs(c) for c in contributions]
        ranked = sorted(range(len(key)), key=key.__getitem__)[:k]
        phi = phis[i]
        for gi in ranked:
            c = contributions[gi]
            if c == 0 or not isfinite(c):
                continue
            sign = 1.0 if c > 0 else -1.0
            signed = [phi[col] * sign for col in t.groups[gi].col_list]
            key = [-v for v in signed]
            best = sorted(range(len(signed)), key=key.__getitem__)[:_CANDIDATES]
            pair_row.append(i)
            pair_group.append(gi)
            pair_c.append(c)
            chains.append(_chain(t, _chain_code(t, gi, [j for j in best if signed[j] > 0])))
    slots = [t.groups[gi].slot for gi in pair_group]
    rating = [p for p, sl in enumerate(slots) if sl >= 0]
    other = [p for p, sl in enumerate(slots) if sl < 0]
    row_list = rows.tolist()
    xl = X.tolist()
    histories: dict[int, _History] = {}
    facts: list[Any] = [None] * len(pair_row)
    got: list[_Facts] = [
        *_rating_facts_small(
            arrays,
            [row_list[pair_row[p]] for p in rating],
            xl,
            [pair_row[p] for p in rating],
            [slots[p] for p in rating],
            [t.groups[pair_group[p]].scale for p in rating],
            t,
            histories,
        ),
        *_activity_facts_small(
            arrays,
            [row_list[pair_row[p]] for p in other],
            xl,
            [pair_row[p] for p in other],
            t,
            histories,
        ),
    ]
    for p, fct in zip(rating + other, got, strict=True):
        facts[p] = fct
    return pair_row, pair_group, pair_c, chains, facts


def _pairs_batch(
    arrays: SessionArrays,
    rows: np.ndarray,
    X: np.ndarray,
    gc: np.ndarray,
    fc: np.ndarray,
    k: int,
    t: _Tables,
) -> _Pairs:
    order = np.argsort(-np.abs(gc), axis=1, kind="stable")[:, :k]
    contrib = np.take_along_axis(gc, order, axis=1)
    keep = (contrib != 0) & np.isfinite(contrib)
    pair_row, pair_rank = np.nonzero(keep)
    pair_group = order[pair_row, pair_rank]
    pair_c = contrib[pair_row, pair_rank]
    sign = np.where(pair_c > 0, 1.0, -1.0)
    n_pairs = pair_row.shape[0]

    # Per pair: the group's features pushing the same way (not NaN, not the padding after the
    # group's columns), largest first, ties in column order; coded as in _chain_code for all
    # pairs at once, one candidate at a time (argmax takes the first of equal values).
    signed = np.take(fc, pair_row[:, None] * fc.shape[1] + t.group_cols[pair_group])
    signed *= sign[:, None]
    signed[~(signed > 0) | t.group_pad[pair_group]] = -np.inf
    codes = pair_group.copy()
    every = np.arange(n_pairs)
    for _ in range(_CANDIDATES):
        best = signed.argmax(axis=1)
        codes *= t.code_base
        codes += np.where(signed[every, best] > 0, best + 1, 0)
        signed[every, best] = -np.inf
    distinct, inverse = np.unique(codes, return_inverse=True)
    table = [t.chains.get(c) or _chain(t, c) for c in distinct.tolist()]
    chains = list(map(table.__getitem__, inverse.tolist()))

    slot = t.group_slot[pair_group]
    is_rating = slot >= 0
    sel_r, sel_a = np.flatnonzero(is_rating), np.flatnonzero(~is_rating)
    got: list[_Facts] = []
    if sel_r.shape[0]:
        got += _rating_facts(
            arrays,
            rows[pair_row[sel_r]],
            X,
            pair_row[sel_r],
            slot[sel_r],
            t.group_scale[pair_group[sel_r]],
            t,
        )
    if sel_a.shape[0]:
        got += _activity_facts(arrays, rows[pair_row[sel_a]], X, pair_row[sel_a], t)
    # Back to pair order: ``got`` holds the rating pairs' facts, then the others'.
    back = np.empty(n_pairs, dtype=np.int64)
    back[np.concatenate([sel_r, sel_a])] = np.arange(n_pairs)
    facts = list(map(got.__getitem__, back.tolist()))
    return pair_row.tolist(), pair_group.tolist(), pair_c.tolist(), chains, facts


# ---------------------------------------------------------------------------------------------


def describe_drivers(
    arrays: SessionArrays,
    rows: np.ndarray,
    registry: FeatureRegistry,
    X: np.ndarray,
    explanation: Explanation,
    *,
    top: int = 3,
) -> list[list[Driver]]:
    """The top reasons behind each scored row's risk, in clinician language.

    Parameters
    ----------
    arrays : SessionArrays
        The session histories the rows were scored from.
    rows : ndarray of int, shape (n_rows,)
        Landmark row of each scored row in ``arrays`` (as :func:`features.build.landmark_rows`
        returns them).
    registry : FeatureRegistry
        The model's feature registry; its profile must be ``arrays.profile``.
    X : ndarray of shape (n_rows, n_features)
        The feature rows that were scored, in registry column order.
    explanation : Explanation
        The explanation of the same rows; ``feature_names`` must equal ``registry.names``.
    top : int, default 3
        Most drivers per row.

    Returns
    -------
    list of list of Driver
        Per scored row, up to ``top`` drivers ordered by decreasing |group contribution| (ties
        keep group order). Groups contributing exactly 0 are left out.

    Raises
    ------
    ValueError
        On mismatched shapes, feature names or profiles, a row outside ``arrays`` or a negative
        ``top``.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    X = np.asarray(X, dtype=np.float64)
    n = rows.shape[0]
    if top < 0:
        raise ValueError("top must be >= 0")
    if X.ndim != 2 or X.shape != (n, len(registry.names)) or explanation.n_rows != n:
        raise ValueError(
            "rows, X and the explanation must describe the same rows, X with one column per "
            "registry feature"
        )
    if explanation.feature_names != registry.names:
        raise ValueError("the explanation's features differ from the registry's")
    if arrays.profile is not registry.profile and arrays.profile != registry.profile:
        raise ValueError("the session arrays and the registry use different instrument profiles")
    if n <= _SMALL_PAIRS:
        row_list = rows.tolist()  # Python's min and max beat numpy's on a few rows
        lo, hi = (min(row_list), max(row_list)) if n else (0, 0)
    else:
        lo, hi = int(rows.min()), int(rows.max())
    if n and (lo < 0 or hi >= arrays.n_rows):
        raise ValueError("rows must be row positions inside the session arrays")
    out: list[list[Driver]] = [[] for _ in range(n)]
    if n == 0 or top == 0:
        return out
    t = _tables(registry, explanation.group_names)

    gc = explanation.group_contributions
    fc = explanation.feature_contributions
    k = min(top, gc.shape[1])
    if n * k <= _SMALL_PAIRS:
        pair_row, pair_group, pair_c, chains, facts = _pairs_small(arrays, rows, X, gc, fc, k, t)
    else:
        pair_row, pair_group, pair_c, chains, facts = _pairs_batch(arrays, rows, X, gc, fc, k, t)

    elements = registry.profile.elements
    groups = t.groups
    new, set_attr = object.__new__, object.__setattr__
    for i, gi, c, chain, f in zip(pair_row, pair_group, pair_c, chains, facts, strict=True):
        g = groups[gi]
        up = c > 0
        # The first sentence of the chain the facts support.
        for build in chain:
            got = build(f, g, up, t)
            if got is not None:
                break
        else:
            got = _generic(g, c)
        focus = g.focus
        if g.kind == "overall":
            el = f.focus_el  # type: ignore[union-attr]
            focus = elements[el].focus if el >= 0 else GENERAL_FOCUS
        # Driver(...) sets its 7 fields one by one through object.__setattr__ (frozen), ~2 us a
        # driver; setting the instance dict at once builds the same object in well under half.
        d = new(Driver)
        set_attr(
            d,
            "__dict__",
            {
                "group": g.name,
                "label": g.label,
                "contribution": c,
                "direction": RAISES if up else LOWERS,
                "text": got[0],
                "evidence": got[1],
                "focus": focus,
            },
        )
        out[i].append(d)
    return out
