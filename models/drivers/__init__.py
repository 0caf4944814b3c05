"""Clinician-language drivers: the top reasons behind a risk score, with the numbers behind them.

A driver is one explanation group (an alliance element, the overall alliance, attendance,
engagement or client covariates) among the ``top`` groups by |signed group contribution|. Its
sentence is chosen from the facts its largest same-signed feature contributions point at (a fall
over the last 3 rated sessions, an unrepaired rupture, a rating below the cut-off, 2 no-shows in
the last 3 appointments, ...) and filled with numbers from the history and the feature row.

- :mod:`~models.drivers.tables`: per-model groups, labels, focus and column lookups.
- :mod:`~models.drivers.facts`: the numbers every chosen driver may quote, vectorised.
- :mod:`~models.drivers.sentences`: one sentence builder per kind of fact.
- :mod:`~models.drivers.writer`: :class:`DriverWriter`, which the scorer builds once per model.

Texts carry session numbers, ratings, counts and day counts; never client ids or dates. Nothing is
logged.
"""

from __future__ import annotations

import numpy as np

from features.arrays import SessionArrays
from features.registry import FeatureRegistry
from models.drivers.facts import RECENT_APPOINTMENTS, RECENT_RATED
from models.drivers.tables import GROUP_LABELS, STEADY_FRACTION, group_label
from models.drivers.writer import GENERAL_FOCUS, DriverWriter
from models.explain import Explanation
from models.results import LOWERS, RAISES, Driver, Evidence

__all__ = [
    "GENERAL_FOCUS",
    "GROUP_LABELS",
    "LOWERS",
    "RAISES",
    "RECENT_APPOINTMENTS",
    "RECENT_RATED",
    "STEADY_FRACTION",
    "Driver",
    "DriverWriter",
    "Evidence",
    "describe_drivers",
    "group_label",
]


def describe_drivers(
    arrays: SessionArrays,
    rows: np.ndarray,
    registry: FeatureRegistry,
    X: np.ndarray,
    explanation: Explanation,
    *,
    top: int = 3,
) -> list[list[Driver]]:
    """:meth:`DriverWriter.describe` with a writer built for this call.

    For one-off use (tests, scripts); a scorer keeps its :class:`DriverWriter` instead.
    """
    writer = DriverWriter.build(registry, explanation.group_names)
    return writer.describe(arrays, rows, X, explanation, top=top)
