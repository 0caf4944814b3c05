"""The feature registry: the single list of feature names, their groups, units and meaning.

Every column :func:`features.build.build_features` returns, the model signature, and the
explanation groups come from here. The names are generated from the instrument profile: one block
of statistics per rated alliance element and for the element mean (``alliance_overall``), then the
overall instrument rules, attendance, engagement and (optionally) client covariates.

Definitions used throughout (the descriptions repeat them where they matter):

* **landmark k**: the state after the k-th scheduled appointment, using only appointments with
  ``session_number <= k``. "Days since" features are relative to that appointment's date.
* **rated session**: an attended appointment with at least one rating (for an element: that
  element rated). Ratings recorded on appointments that were not attended are ignored.
* **element mean** at a session: mean of the elements rated at that session.
* **total**: the instrument's headline score, ``profile.total`` = ``"sum"`` (SRS, prorated to all
  elements when some are unrated) or ``"mean"`` (the element mean).
* **rupture floor**: 5% of the scale range (0.5 points on 0-10, 0.2 on 1-5), the smallest drop
  that counts as a rupture; used alone while fewer than 3 earlier rated sessions exist.

The module is one job at about 600 lines and stays whole: most of it is the declarative table of
features with their clinician-readable descriptions, which reads best in one place; the kernels
that compute them are in :mod:`features.kernels`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache, cached_property
from typing import Any, Literal, NamedTuple

import numpy as np

from features.contract import ATTENDANCE_CODES
from features.profiles import OVERALL, Element, InstrumentProfile

FeatureKind = Literal[
    "level",
    "change",
    "variability",
    "rupture",
    "rule",
    "attendance",
    "engagement",
    "context",
    "client",
]

ATTENDANCE_GROUP = "attendance"
ENGAGEMENT_GROUP = "engagement"
CLIENT_GROUP = "client"

#: Rupture floor as a fraction of the scale range: 0.5 points on 0-10, rescaled for 1-5.
RUPTURE_FLOOR_FRACTION = 0.05
#: Rating history needed before the client's own SD is trusted for rupture thresholds.
RUPTURE_MIN_HISTORY = 3
#: Age below which the ``client_age_under_25`` flag is set (years).
YOUNG_AGE_YEARS = 25.0
#: Schema version of :meth:`FeatureRegistry.to_dict`.
REGISTRY_FORMAT = 1
#: Keys of the per-attendance-code statistics in :attr:`FeatureRegistry.layout`.
ATTENDANCE_CODE_STATS = tuple(f"{ATTENDANCE_GROUP}_{kind}" for kind in ("count", "rate", "last"))


@dataclass(frozen=True)
class Feature:
    """One model input column.

    ``name`` is ``<group>_<stat>``; ``group`` is the explanation group (an element name,
    ``alliance_overall``, ``attendance``, ``engagement`` or ``client``); ``description`` is
    clinician-readable and states the unit; ``kind`` is the family of the statistic.
    """

    name: str
    group: str
    description: str
    unit: str
    kind: FeatureKind

    @property
    def stat(self) -> str:
        """The statistic part of the name (``goals_slope`` -> ``slope``)."""
        return self.name[len(self.group) + 1 :]


class StatisticsTable(NamedTuple):
    """Where the feature kernel puts each statistic of one registry, and where columns read them.

    The kernel fills a float64 ``(height, n_rows)`` table, a row per statistic and source (rating
    group or attendance code); output column ``c`` is table row ``sources[c]``.
    """

    #: Statistic key (as in :attr:`FeatureRegistry.layout`) -> its table rows: a slice of one
    #: row per rating group or per attendance code, or one row index for a single statistic.
    rows: dict[str, int | slice]
    #: ``(n_features,)`` int64: the table row of each output column.
    sources: np.ndarray
    #: Number of table rows.
    height: int


@dataclass(frozen=True)
class FeatureRegistry:
    """Every feature for one instrument profile, in column order.

    Build it with :func:`feature_registry`; store it with :meth:`to_dict` (JSON-able) next to a
    model and restore it with :meth:`from_dict`.
    """

    profile: InstrumentProfile
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        for f in self.features:
            if not f.name.startswith(f.group + "_"):
                raise ValueError(f"feature {f.name!r} is not named <group>_<stat>")

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Column order of every feature matrix built with this registry."""
        return tuple(f.name for f in self.features)

    @cached_property
    def groups(self) -> tuple[str, ...]:
        """Explanation groups, unique, in order of first appearance."""
        return tuple(dict.fromkeys(f.group for f in self.features))

    @cached_property
    def group_of(self) -> dict[str, str]:
        """Feature name -> explanation group."""
        return {f.name: f.group for f in self.features}

    @cached_property
    def index_of_group(self) -> dict[str, np.ndarray]:
        """Explanation group -> int64 array of its column positions."""
        positions: dict[str, list[int]] = {g: [] for g in self.groups}
        for i, f in enumerate(self.features):
            positions[f.group].append(i)
        return {g: np.asarray(p, dtype=np.int64) for g, p in positions.items()}

    @cached_property
    def rating_groups(self) -> tuple[str, ...]:
        """Groups computed from ratings: the profile's elements, then ``alliance_overall``."""
        return (*self.profile.element_names, OVERALL)

    @property
    def include_covariates(self) -> bool:
        return CLIENT_GROUP in self.groups

    @cached_property
    def _by_name(self) -> dict[str, Feature]:
        return {f.name: f for f in self.features}

    def by_name(self, name: str) -> Feature:
        """The feature called ``name``; ``KeyError`` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no feature {name!r} in the {self.profile.name} registry") from None

    @cached_property
    def layout(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Where each computed statistic goes: key -> (output columns, source rows or None).

        The kernel (:func:`features.kernels.compute_feature_matrix`) computes some statistics as
        one 2-D array with a row per source: per-rating-group statistics
        (:data:`PER_GROUP_STATS`, rows in :attr:`rating_groups` order, key = the statistic) and
        per-attendance-code statistics (rows in ``ATTENDANCE_CODES`` order, keys
        ``attendance_count``, ``attendance_rate``, ``attendance_last``). Every other feature is a
        vector keyed by its full name. Source rows are ``None`` when they are ``0, 1, 2, ...``.
        """
        slots = {g: i for i, g in enumerate(self.rating_groups)}
        code_stats = {
            f"{code}_{kind}" if kind != "last" else f"last_{code}": (key, i)
            for i, code in enumerate(ATTENDANCE_CODES)
            for kind, key in zip(("count", "rate", "last"), ATTENDANCE_CODE_STATS, strict=True)
        }
        grouped: dict[str, tuple[list[int], list[int]]] = {}
        for i, f in enumerate(self.features):
            if f.group in slots and f.stat in PER_GROUP_STATS:
                key, slot = f.stat, slots[f.group]
            elif f.group == ATTENDANCE_GROUP and f.stat in code_stats:
                key, slot = code_stats[f.stat]
            else:
                key, slot = f.name, -1
            cols, srcs = grouped.setdefault(key, ([], []))
            cols.append(i)
            srcs.append(slot)
        out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for key, (cols, srcs) in grouped.items():
            identity = srcs == list(range(len(srcs))) or srcs == [-1]
            out[key] = (
                np.asarray(cols, dtype=np.int64),
                None if identity else np.asarray(srcs, dtype=np.int64),
            )
        return out

    @cached_property
    def statistics_table(self) -> StatisticsTable:
        """The kernel's table of statistics for this registry (computed once per registry):
        rows for every :attr:`layout` key, one per rating group or attendance code for the
        per-source statistics, and the row every output column reads."""
        sizes = dict.fromkeys(PER_GROUP_STATS, len(self.rating_groups))
        sizes.update(dict.fromkeys(ATTENDANCE_CODE_STATS, len(ATTENDANCE_CODES)))
        rows: dict[str, int | slice] = {}
        sources = np.empty(len(self.features), dtype=np.int64)  # every column has a layout key
        height = 0
        for key, (cols, src) in self.layout.items():
            size = sizes.get(key)
            if size is None:
                rows[key] = height
                sources[cols] = height
                height += 1
                continue
            rows[key] = slice(height, height + size)
            sources[cols] = height + (np.arange(cols.shape[0]) if src is None else src)
            height += size
        return StatisticsTable(rows, sources, height)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the full profile definition and every feature."""
        return {
            "format": REGISTRY_FORMAT,
            "profile": asdict(self.profile),
            "features": [asdict(f) for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureRegistry:
        """Inverse of :meth:`to_dict` (lists from JSON become tuples again)."""
        if data.get("format") != REGISTRY_FORMAT:
            raise ValueError(f"unsupported feature registry format {data.get('format')!r}")
        p = dict(data["profile"])
        p["elements"] = tuple(Element(**e) for e in p["elements"])
        p["sources"] = tuple(p.get("sources", ()))
        profile = InstrumentProfile(**p)
        return cls(profile=profile, features=tuple(Feature(**f) for f in data["features"]))


# ---------------------------------------------------------------------------------------------
# The specifications the names are generated from. Descriptions are templates: {what} is the
# element label or "alliance (mean of rated elements)", {scale} e.g. "0-10".


@dataclass(frozen=True)
class _Spec:
    stat: str
    kind: FeatureKind
    unit: str
    text: str


_PER_GROUP: tuple[_Spec, ...] = (
    _Spec("last", "level", "points ({scale})", "{What} at the most recent rated session."),
    _Spec(
        "last3_mean",
        "level",
        "points ({scale})",
        "Mean {what} over the last 3 rated sessions (fewer while fewer are rated).",
    ),
    _Spec(
        "early_mean",
        "level",
        "points ({scale})",
        "Early alliance: mean {what} over the rated sessions among appointments 1-3, "
        "as far as seen at the landmark.",
    ),
    _Spec("min", "level", "points ({scale})", "Lowest {what} so far."),
    _Spec(
        "slope",
        "change",
        "points per rated session",
        "Trend of {what}: ordinary least-squares slope against the rated-session index "
        "(1, 2, 3, ...) over all rated sessions so far. NaN with fewer than 2 rated sessions.",
    ),
    _Spec(
        "change_first",
        "change",
        "points",
        "{What} at the most recent rated session minus at the first. "
        "NaN with fewer than 2 rated sessions.",
    ),
    _Spec(
        "change_prev",
        "change",
        "points",
        "{What} at the most recent rated session minus at the previous one. "
        "NaN with fewer than 2 rated sessions.",
    ),
    _Spec(
        "dev_own_mean",
        "change",
        "points",
        "{What} at the most recent rated session minus the client's own mean so far. "
        "NaN with fewer than 2 rated sessions.",
    ),
    _Spec(
        "sd",
        "variability",
        "points",
        "The client's own standard deviation of {what} (sample SD, ddof = 1) over rated sessions "
        "so far. NaN with fewer than 2 rated sessions.",
    ),
    _Spec(
        "mssd",
        "variability",
        "points squared",
        "Instability of {what}: mean squared difference between consecutive rated sessions. "
        "NaN with fewer than 2 rated sessions.",
    ),
    _Spec(
        "ruptures_1sd",
        "rupture",
        "count",
        "Ruptures in {what}: drops from the previous rated session of at least "
        "1 x max(own SD up to that previous session, floor {floor}). While fewer than "
        "{min_history} earlier sessions are rated, the floor alone is the threshold.",
    ),
    _Spec(
        "ruptures_2sd",
        "rupture",
        "count",
        "Large ruptures in {what}: drops from the previous rated session of at least "
        "2 x max(own SD up to that previous session, floor {floor}); floor alone while "
        "fewer than {min_history} earlier sessions are rated.",
    ),
    _Spec(
        "has_rupture",
        "rupture",
        "0/1",
        "1 if at least one rupture (1-SD drop) in {what} has occurred so far.",
    ),
    _Spec(
        "unrepaired",
        "rupture",
        "0/1",
        "1 if the most recent rupture in {what} is still open: no rated session since has "
        "returned to the level before the drop. 0 when repaired or when there was no rupture.",
    ),
    _Spec(
        "sessions_since_rupture",
        "rupture",
        "appointments",
        "Appointments since the most recent rupture in {what} (0 = at this appointment). "
        "NaN when there was none (see has_rupture).",
    ),
    _Spec(
        "n_rated",
        "engagement",
        "sessions",
        "Number of rated sessions so far in which the {label} element was rated "
        "(0: its level, change and variability features are NaN by design).",
    ),
    _Spec(
        "below_cutoff",
        "rule",
        "0/1",
        "1 if {what} at the most recent rated session is below {cutoff}.",
    ),
)

#: Statistics computed once for all rating groups, as one ``(n_elements + 1, n_rows)`` array.
PER_GROUP_STATS: frozenset[str] = frozenset(s.stat for s in _PER_GROUP)

_NEVER_RATED = " NaN if never rated."


def _fmt(x: float) -> str:
    return f"{x:g}"


def _points(x: float) -> str:
    return f"{_fmt(x)} point" + ("" if x == 1 else "s")


def _rating_group_features(profile: InstrumentProfile) -> list[Feature]:
    scale = f"{_fmt(profile.scale_min)}-{_fmt(profile.scale_max)}"
    floor = _points(RUPTURE_FLOOR_FRACTION * profile.scale_range)
    targets: list[tuple[str, str, str, str]] = [
        (
            e.name,
            f"{e.label} rating",
            e.label,
            f"the element cut-off {_fmt(profile.element_cutoff)}",
        )
        for e in profile.elements
    ]
    n = len(profile.elements)
    total_text = (
        f"the instrument total (sum of the {n} elements, prorated when some are unrated; "
        f"{_fmt(n * profile.scale_min)}-{_fmt(n * profile.scale_max)}) is below the profile "
        f"cut-off {_fmt(profile.cutoff_total)}"
        if profile.total == "sum"
        else f"the mean of the rated elements is below the profile cut-off "
        f"{_fmt(profile.cutoff_total)}"
    )
    targets.append((OVERALL, "alliance (mean of the rated elements)", "", ""))
    overall_text = {
        "below_cutoff": f"1 if {total_text} at the most recent rated session.",
        "n_rated": "Number of rated sessions so far: attended, with at least one element rated "
        "(0: every alliance feature is NaN by design).",
    }
    out: list[Feature] = []
    for group, what, label, cutoff in targets:
        for s in _PER_GROUP:
            if group == OVERALL and s.stat in overall_text:
                text = overall_text[s.stat]
            else:
                text = s.text.format(
                    what=what,
                    What=what[0].upper() + what[1:],
                    label=label,
                    floor=floor,
                    min_history=RUPTURE_MIN_HISTORY,
                    cutoff=cutoff,
                )
            if s.kind in ("level", "rule") and "NaN" not in text:
                text += _NEVER_RATED
            out.append(
                Feature(f"{group}_{s.stat}", group, text, s.unit.format(scale=scale), s.kind)
            )
    return out


def _overall_rule_features(profile: InstrumentProfile) -> list[Feature]:
    drop_scale = "total" if profile.total == "sum" else "element mean"
    ceiling = _fmt(profile.scale_max)
    return [
        Feature(
            f"{OVERALL}_any_element_below_cutoff",
            OVERALL,
            f"1 if any element rated at the most recent rated session is below "
            f"{_fmt(profile.element_cutoff)}." + _NEVER_RATED,
            "0/1",
            "rule",
        ),
        Feature(
            f"{OVERALL}_ceiling_streak",
            OVERALL,
            f"Number of consecutive most recent rated sessions with every rated element at the "
            f"scale maximum {ceiling} (perfect scores, a known warning sign). 0 if never rated.",
            "sessions",
            "rule",
        ),
        Feature(
            f"{OVERALL}_ceiling_flag",
            OVERALL,
            "1 if the ceiling streak is at least 2 rated sessions.",
            "0/1",
            "rule",
        ),
        Feature(
            f"{OVERALL}_drop_alert",
            OVERALL,
            f"1 if the {drop_scale} fell by at least {_points(profile.drop_points)} since the "
            "previous rated session. NaN with fewer than 2 rated sessions.",
            "0/1",
            "rule",
        ),
    ]


_CODE_TEXT = {
    "attended": "attended",
    "no_show": "no-show",
    "late_cancel": "late cancellation",
    "cancelled": "cancelled",
    "rescheduled": "rescheduled",
}


def _attendance_features() -> list[Feature]:
    g = ATTENDANCE_GROUP
    out = [
        Feature(
            f"{g}_{c}_count",
            g,
            f"Number of appointments so far recorded as {_CODE_TEXT[c]}.",
            "appointments",
            "attendance",
        )
        for c in ATTENDANCE_CODES
    ]
    out += [
        Feature(
            f"{g}_{c}_rate",
            g,
            f"Share of appointments so far recorded as {_CODE_TEXT[c]}.",
            "share (0-1)",
            "attendance",
        )
        for c in ATTENDANCE_CODES
    ]
    out += [
        Feature(
            f"{g}_no_show_first3",
            g,
            "Number of no-shows among appointments 1-3 (as far as seen at the landmark).",
            "appointments",
            "attendance",
        ),
        Feature(
            f"{g}_missed_streak",
            g,
            "Consecutive missed appointments (no-show or late cancellation) up to and including "
            "the landmark appointment. 0 if the landmark appointment was not missed.",
            "appointments",
            "attendance",
        ),
    ]
    out += [
        Feature(
            f"{g}_last_{c}",
            g,
            f"1 if the landmark (most recent) appointment was recorded as {_CODE_TEXT[c]}.",
            "0/1",
            "attendance",
        )
        for c in ATTENDANCE_CODES
    ]
    out += [
        Feature(
            f"{g}_gap_mean_days",
            g,
            "Mean gap between consecutive appointments so far. NaN with a single appointment.",
            "days",
            "attendance",
        ),
        Feature(
            f"{g}_gap_max_days",
            g,
            "Longest gap between consecutive appointments so far. NaN with a single appointment.",
            "days",
            "attendance",
        ),
    ]
    return out


def _engagement_features() -> list[Feature]:
    g = ENGAGEMENT_GROUP
    return [
        Feature(
            f"{g}_landmark",
            g,
            "Landmark k: the session number of the most recent scheduled appointment.",
            "appointment number",
            "context",
        ),
        Feature(
            f"{g}_days_since_intake",
            g,
            "Days from intake to the landmark appointment. NaN if the intake date is unknown.",
            "days",
            "engagement",
        ),
        Feature(
            f"{g}_days_since_attended",
            g,
            "Days from the most recent attended appointment to the landmark appointment "
            "(0 if the landmark appointment was attended). NaN if never attended "
            "(see never_attended).",
            "days",
            "engagement",
        ),
        Feature(
            f"{g}_never_attended",
            g,
            "1 if no appointment so far was attended.",
            "0/1",
            "engagement",
        ),
        Feature(
            f"{g}_never_rated",
            g,
            "1 if no session so far is rated (every alliance feature is NaN by design).",
            "0/1",
            "engagement",
        ),
        Feature(
            f"{g}_unrated_share",
            g,
            "Share of attended appointments so far left without any alliance rating. "
            "NaN if never attended.",
            "share (0-1)",
            "engagement",
        ),
    ]


def _client_features() -> list[Feature]:
    g = CLIENT_GROUP
    return [
        Feature(f"{g}_age", g, "Client age at intake. NaN if unknown.", "years", "client"),
        Feature(
            f"{g}_age_under_25",
            g,
            f"1 if the client is younger than {_fmt(YOUNG_AGE_YEARS)} years. NaN if age unknown.",
            "0/1",
            "client",
        ),
    ]


@cache
def feature_registry(
    profile: InstrumentProfile, *, include_covariates: bool = False
) -> FeatureRegistry:
    """Every feature for ``profile``, in column order.

    Parameters
    ----------
    profile
        The instrument profile (elements, scale, cut-offs).
    include_covariates
        Add the client covariates ``client_age`` (years) and ``client_age_under_25``. Off by
        default. Gender and referral source are never model inputs: they are kept for fairness
        audits only.

    Returns
    -------
    FeatureRegistry
        Cached: the same object for the same arguments.
    """
    features = _rating_group_features(profile) + _overall_rule_features(profile)
    features += _attendance_features() + _engagement_features()
    if include_covariates:
        features += _client_features()
    return FeatureRegistry(profile=profile, features=tuple(features))
