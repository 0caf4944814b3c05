"""Instrument profiles: which alliance elements a clinic rates, on which scale, with which alerts.

Feature code reads everything scale-dependent from here and never assumes six elements.
Cut-offs for profiles other than SRS are linear rescalings of the SRS rules onto the profile's
scale; they are documented equivalents, not separately validated thresholds.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

#: Explanation group for features built from the mean of all elements.
OVERALL = "alliance_overall"
ALLIANCE_PREFIX = "alliance_"


@dataclass(frozen=True)
class Element:
    """One rated alliance element.

    ``name`` is the column suffix (``alliance_<name>``) and the explanation group;
    ``label`` is the clinician's name for it; ``focus`` the alliance-building strategy
    a clinician can act on when this element drives risk.
    """

    name: str
    label: str
    focus: str


@dataclass(frozen=True)
class InstrumentProfile:
    """How one instrument is scored and which clinical alert rules apply to it.

    ``total`` is how the instrument's headline score combines elements: SRS sums its four
    items (0-40), the others average. ``cutoff_total`` (below it is a warning),
    ``element_cutoff`` (any element below it is a warning) and ``drop_points`` (a fall of at
    least this much in the total since the last rated session) are on that total's scale.
    """

    name: str
    elements: tuple[Element, ...]
    scale_min: float
    scale_max: float
    total: Literal["sum", "mean"]
    cutoff_total: float
    element_cutoff: float
    drop_points: float
    description: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)

    # Cached (computed once per profile, not per request): the serving path reads them several
    # times per client. cached_property stores in the instance dict, which a frozen dataclass
    # allows; equality and hashing still use the fields only.
    @functools.cached_property
    def element_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.elements)

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        """Session-table rating columns, in profile order."""
        return tuple(ALLIANCE_PREFIX + e.name for e in self.elements)

    @property
    def scale_range(self) -> float:
        return self.scale_max - self.scale_min

    def element(self, name: str) -> Element:
        for e in self.elements:
            if e.name == name:
                return e
        raise KeyError(f"profile {self.name!r} has no element {name!r}")


_EMPATHY = "Establish an empathic connection: reflect back what you hear and check you understood."
_GOALS = "Clarify goals and expectations together: revisit what the client wants from therapy."
_COLLAB = "Invite collaboration and active participation: agree the next steps jointly."
_OPEN = (
    "Keep communication open and transparent: ask for feedback on the session and "
    "name any strain directly."
)
_ACCEPT = "Convey unconditional acceptance: respond to disclosures without judgement."
_TRUST = "Rebuild trust and rapport: acknowledge any rupture and repair it explicitly."


def _rescaled(srs_value: float, lo: float, hi: float) -> float:
    """Map a value on the SRS 0-10 item scale linearly onto [lo, hi]."""
    return lo + (hi - lo) * srs_value / 10.0


ALLIANCE6 = InstrumentProfile(
    name="alliance6",
    elements=(
        Element("empathy", "Empathy", _EMPATHY),
        Element("acceptance", "Unconditional acceptance", _ACCEPT),
        Element("trust", "Trust and rapport", _TRUST),
        Element("goals", "Clear goals and expectations", _GOALS),
        Element("collaboration", "Collaboration and active participation", _COLLAB),
        Element("communication", "Open and transparent communication", _OPEN),
    ),
    scale_min=0.0,
    scale_max=10.0,
    total="mean",
    # SRS 36/40 is a mean item score of 9.0; the same rule on a 0-10 mean.
    cutoff_total=9.0,
    element_cutoff=8.0,
    drop_points=1.0,
    description="Six clinician-named alliance elements, each rated 0-10 by the client.",
    sources=("Duncan et al. 2003 (SRS cut-off 36/40, applied per item as 9/10)",),
)

SRS = InstrumentProfile(
    name="srs",
    elements=(
        Element("relationship", "Relationship (felt heard, understood, respected)", _EMPATHY),
        Element("goals", "Goals and topics", _GOALS),
        Element("approach", "Approach or method", _COLLAB),
        Element("overall", "Overall session fit", _OPEN),
    ),
    scale_min=0.0,
    scale_max=10.0,
    total="sum",
    cutoff_total=36.0,
    element_cutoff=8.0,
    drop_points=1.0,
    description="Session Rating Scale: 4 items 0-10, total 0-40.",
    sources=(
        "Duncan et al. 2003, J Brief Therapy 3:3-12 (SRS, cut-off 36)",
        "Miller, Duncan et al. (FIT/OpenFIT alert: total < 36 or any drop)",
    ),
)

WAI_SR = InstrumentProfile(
    name="wai_sr",
    elements=(
        Element("goal", "Agreement on goals", _GOALS),
        Element("task", "Agreement on tasks", _COLLAB),
        Element("bond", "Emotional bond", _EMPATHY),
    ),
    scale_min=1.0,
    scale_max=5.0,
    total="mean",
    # No validated WAI-SR cut-off exists; the SRS rules rescaled linearly onto 1-5.
    cutoff_total=_rescaled(9.0, 1.0, 5.0),
    element_cutoff=_rescaled(8.0, 1.0, 5.0),
    drop_points=1.0 * (5.0 - 1.0) / 10.0,
    description="Working Alliance Inventory, short revised: Goal, Task, Bond subscale means 1-5.",
    sources=("Hatcher & Gillaspy 2006 (WAI-SR)", "Munder et al. 2010 (WAI-SR validation)"),
)

PROFILES: dict[str, InstrumentProfile] = {p.name: p for p in (ALLIANCE6, SRS, WAI_SR)}
DEFAULT_PROFILE = ALLIANCE6.name


def get_profile(name: str) -> InstrumentProfile:
    """Return the named profile, or raise ``KeyError`` listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(
            f"unknown instrument profile {name!r}; known: {', '.join(PROFILES)}"
        ) from None


def infer_profile(columns: Iterable[object]) -> InstrumentProfile | None:
    """The profile whose rating columns are exactly the ``alliance_*`` columns present, if any."""
    present = {str(c) for c in columns if str(c).startswith(ALLIANCE_PREFIX)}
    for p in PROFILES.values():
        if present == set(p.columns):
            return p
    return None
