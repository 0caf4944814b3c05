"""A driver's sentence: the first of its candidate sentences that the facts support.

The builders live by subject (:mod:`~models.drivers.alliance`, :mod:`~models.drivers.activity`);
each returns ``(text, evidence)`` or None when its facts are absent or do not support the group's
direction (a rise is never quoted as a reason for risk), and the next one is tried then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

from models.drivers import activity, alliance
from models.drivers.facts import Facts
from models.drivers.tables import Group
from models.drivers.wording import Sentence
from models.results import Evidence

#: Sentence kind (the topics of :mod:`models.drivers.tables`) -> its builder.
BUILDERS: dict[str, Callable[[Any, Group, bool], Sentence]] = {
    **alliance.BUILDERS,
    **activity.BUILDERS,
}


def write(
    f: Facts, g: Group, up: bool, candidates: Iterable[int], contribution: float
) -> tuple[str, Evidence]:
    """The first sentence the facts support among the candidate features' (positions in the
    group, strongest first), then the group's defaults; else one quoting ``contribution``.

    A sentence named twice is tried twice: it declines again, so the result is the same.
    """
    for topic in chain(*(g.topics[j] for j in candidates), g.defaults):
        got = BUILDERS[topic](f, g, up)
        if got is not None:
            return got
    return (
        f"{g.label} contributes {contribution:+.2f} to the risk (log-odds)",
        {"fact": "contribution", "contribution": round(contribution, 2)},
    )
