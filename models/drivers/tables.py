"""Per-model static tables: how each explanation group is named, worded and looked up.

Everything here depends on the feature registry and the explanation's groups only, so
:meth:`Tables.build` runs once per model (the driver writer the scorer holds keeps the result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from features.profiles import OVERALL, InstrumentProfile
from features.registry import ATTENDANCE_GROUP, CLIENT_GROUP, ENGAGEMENT_GROUP, FeatureRegistry

#: Labels of the non-element groups.
GROUP_LABELS: dict[str, str] = {
    OVERALL: "Overall alliance",
    ATTENDANCE_GROUP: "Attendance",
    ENGAGEMENT_GROUP: "Engagement",
    CLIENT_GROUP: "Client characteristics",
}
#: "Steady" means the last 3 ratings span at most this fraction of the scale (1 point on 0-10),
#: twice the rupture floor of :mod:`features.registry`.
STEADY_FRACTION = 0.10

#: Per feature statistic, the sentences that can say what it measures, best first.
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
#: succeeds, so only groups this package does not know reach the generic sentence.
_DEFAULT_TOPICS: dict[str, tuple[str, ...]] = {
    "element": ("trend3", "level", "n_rated"),
    "overall": ("trend3", "level", "n_rated"),
    ATTENDANCE_GROUP: ("recent_missed", "attended_share"),
    ENGAGEMENT_GROUP: ("landmark",),
    CLIENT_GROUP: ("age",),
    "other": (),
}

#: Feature statistics of rating groups the facts carry, in :class:`~models.drivers.facts.
#: RatingFacts` order: first the rating-valued ones (rescaled for display, see ``Group.scale``),
#: then counts, flags and session counts.
RATING_VALUE_STATS = (
    "last3_mean",
    "early_mean",
    "min",
    "slope",
    "change_first",
    "change_prev",
    "dev_own_mean",
    "sd",
)
RATING_STATS = (
    *RATING_VALUE_STATS,
    "ruptures_1sd",
    "has_rupture",
    "unrepaired",
    "sessions_since_rupture",
    "below_cutoff",
    "any_element_below_cutoff",
    "ceiling_streak",
    "drop_alert",
)
#: Features of attendance, engagement and client groups the facts carry.
ACTIVITY_FEATURES = (
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


def group_label(profile: InstrumentProfile, group: str) -> str:
    """Clinician name of an explanation group: the element's label, or "Attendance", ..."""
    if group in profile.element_names:
        return profile.element(group).label
    return GROUP_LABELS.get(group, group.replace("_", " ").capitalize())


def fmt(x: float) -> str:
    """A cut-off or a scale end as the texts quote it: ``8``, ``36``, ``2.5``."""
    return f"{x:g}"


@dataclass(frozen=True, slots=True)
class Group:
    """How one explanation group is described."""

    name: str
    kind: str  # element | overall | attendance | engagement | client | other
    label: str
    profile: InstrumentProfile
    slot: int  # row of the group in features.kernels.rated_values (rating groups), else -1
    topics: tuple[tuple[str, ...], ...]  # per column of the group: sentences to try, in order
    defaults: tuple[str, ...]  # sentences tried after the candidate features' own
    focus: str | None  # alliance-building strategy (elements; the overall one is per client)
    subject: str  # how sentences name the group
    within: str  # how "no rupture in ..." names it
    verb: str  # "rated" for ratings, "was" for a summed total
    scale: float  # display factor: the element count for a summed total, else 1
    cutoff: float  # display-scale cut-off of a rating group (NaN otherwise)
    steady: float  # display-scale range counted as steady
    has_cutoff: bool  # cutoff is finite
    cutoff_r2: float  # cutoff as the evidence quotes it (2 decimals)
    cutoff_text: str  # cutoff as the text quotes it


@dataclass(frozen=True, eq=False)
class Tables:
    """Groups and column lookups of one model (one registry and grouping).

    Attributes
    ----------
    groups : tuple of Group
        In the explanation's group order.
    group_cols : ndarray of int64, shape (n_groups, widest group)
        Feature columns of each group, padded with 0; ``group_pad`` is True on the padding.
    rating_stat_cols : ndarray of int64, shape (n_elements + 1, len(RATING_STATS))
        Column of each rating group's statistic, -1 where the registry lacks it.
    element_last_cols : ndarray of int64, shape (n_elements,)
        Column of each element's latest rating, -1 where absent.
    activity_cols : ndarray of int64, shape (len(ACTIVITY_FEATURES),)
        Column of each activity feature, -1 where absent.
    """

    groups: tuple[Group, ...]
    group_cols: np.ndarray
    group_pad: np.ndarray
    group_slot: np.ndarray  # (n_groups,) Group.slot
    group_scale: np.ndarray  # (n_groups,) Group.scale
    rating_stat_cols: np.ndarray
    element_last_cols: np.ndarray
    activity_cols: np.ndarray

    @classmethod
    def build(cls, registry: FeatureRegistry, group_names: tuple[str, ...]) -> Tables:
        """The tables of ``registry`` explained by ``group_names``; ValueError on an unknown group."""
        index = registry.index_of_group
        groups = []
        for name in group_names:
            if name not in index:
                raise ValueError(f"explanation group {name!r} is not in the feature registry")
            stats = [registry.features[c].stat for c in index[name].tolist()]
            groups.append(_group(registry, name, stats))
        widest = max((len(index[g.name]) for g in groups), default=0)
        # At least one (padding) column, so that every driver has candidates to rank.
        cols = np.full((len(groups), max(widest, 1)), -1, dtype=np.int64)
        for gi, g in enumerate(groups):
            cols[gi, : len(index[g.name])] = index[g.name]
        names = {name: i for i, name in enumerate(registry.names)}
        profile = registry.profile

        def columns(wanted: list[str]) -> np.ndarray:
            return np.array([names.get(f, -1) for f in wanted], dtype=np.int64)

        return cls(
            groups=tuple(groups),
            group_cols=np.maximum(cols, 0),
            group_pad=cols < 0,
            group_slot=np.array([g.slot for g in groups], dtype=np.int64),
            group_scale=np.array([g.scale for g in groups], dtype=np.float64),
            rating_stat_cols=columns(
                [f"{g}_{s}" for g in registry.rating_groups for s in RATING_STATS]
            ).reshape(len(registry.rating_groups), len(RATING_STATS)),
            element_last_cols=columns([f"{e}_last" for e in profile.element_names]),
            activity_cols=columns(list(ACTIVITY_FEATURES)),
        )


def _group(registry: FeatureRegistry, name: str, stats: list[str]) -> Group:
    """The description of group ``name``, whose features have the statistics ``stats``."""
    profile = registry.profile
    scale, focus, verb, cutoff = 1.0, None, "rated", math.nan
    label = group_label(profile, name)
    subject = label
    if name in profile.element_names:
        kind, focus, cutoff = "element", profile.element(name).focus, profile.element_cutoff
    elif name == OVERALL:
        kind, cutoff = "overall", profile.cutoff_total
        if profile.total == "sum":
            scale, subject, verb = float(len(profile.elements)), f"{label} total", "was"
    else:
        kind = name if name in _TOPICS_BY_KIND else "other"
        verb = ""
    table = _TOPICS_BY_KIND.get(kind, {})
    return Group(
        name=name,
        kind=kind,
        label=label,
        profile=profile,
        slot=registry.rating_groups.index(name) if name in registry.rating_groups else -1,
        topics=tuple(table.get(s, ()) for s in stats),
        defaults=_DEFAULT_TOPICS[kind],
        focus=focus,
        subject=subject,
        within="the overall alliance" if kind == "overall" else label,
        verb=verb,
        scale=scale,
        cutoff=cutoff,
        steady=STEADY_FRACTION * profile.scale_range * scale,
        has_cutoff=math.isfinite(cutoff),
        cutoff_r2=round(cutoff, 2),
        cutoff_text=fmt(cutoff),
    )
