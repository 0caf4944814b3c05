"""Profiles, one-client histories and explanations shared by the driver tests."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from scipy.special import expit

from features.arrays import SessionArrays
from features.build import landmark_rows
from features.kernels import compute_feature_matrix
from features.profiles import get_profile
from features.registry import FeatureRegistry, feature_registry
from models.drivers import LOWERS, RAISES, Driver, describe_drivers
from models.explain import Explanation
from tests.features.packing import one_client

ALLIANCE6 = get_profile("alliance6")
SRS = get_profile("srs")
WEEK = np.timedelta64(7, "D")
START = np.datetime64("2024-01-08", "D")


def client(
    profile=ALLIANCE6,
    *,
    ratings: dict[str, Sequence[float | None]] | None = None,
    attendance: Sequence[str] | None = None,
    default: float | None = 9.0,
    age: float | None = None,
) -> SessionArrays:
    """One client with weekly appointments; elements not in ``ratings`` are rated ``default``."""
    ratings = ratings or {}
    n = len(attendance) if attendance is not None else len(next(iter(ratings.values())))
    attendance = attendance if attendance is not None else ["attended"] * n
    full = {e: list(ratings.get(e, [default] * n)) for e in profile.element_names}
    return one_client(
        profile,
        session_number=np.arange(1, n + 1),
        session_date=START + WEEK * np.arange(n),
        attendance=list(attendance),
        ratings=full,
        intake_date=START - WEEK,
        age=age,
    )


def explanation(registry: FeatureRegistry, fc: np.ndarray) -> Explanation:
    """An explanation with the given feature contributions (groups are their signed sums)."""
    fc = np.atleast_2d(np.asarray(fc, dtype=np.float64))
    groups = registry.index_of_group
    names = tuple(groups)
    gc = np.column_stack([fc[:, groups[g]].sum(axis=1) for g in names])
    base = np.full(fc.shape[0], -1.0)
    logit = base + gc.sum(axis=1)
    return Explanation(
        space="calibrated log-odds",
        base_logit=base,
        base_probability=expit(base),
        feature_contributions=fc,
        group_contributions=gc,
        feature_names=registry.names,
        group_names=names,
        logit=logit,
        probability=expit(logit),
    )


def describe(
    arrays: SessionArrays,
    contributions: dict[str, float],
    *,
    registry: FeatureRegistry | None = None,
    top: int = 3,
) -> tuple[list[Driver], np.ndarray]:
    """Drivers of the latest landmark when only ``contributions`` (feature -> value) are nonzero."""
    registry = registry or feature_registry(arrays.profile)
    rows = landmark_rows(arrays, "latest")
    X = compute_feature_matrix(arrays, registry, rows)
    fc = np.zeros((1, len(registry.names)))
    for name, value in contributions.items():
        fc[0, registry.names.index(name)] = value
    out = describe_drivers(arrays, rows, registry, X, explanation(registry, fc), top=top)
    return out[0], X[0]


def check_driver(d: Driver) -> None:
    """Invariants of every driver: a real sentence, JSON-safe evidence, no nan anywhere."""
    assert d.text and not d.text[0].islower(), d.text
    assert "nan" not in d.text.lower() and "inf" not in d.text.lower(), d.text
    assert d.direction == (RAISES if d.contribution > 0 else LOWERS)
    json.dumps(d.evidence, allow_nan=False)
    assert isinstance(d.evidence["fact"], str)


def random_explanation(registry: FeatureRegistry, n: int, seed: int) -> Explanation:
    rng = np.random.default_rng(seed)
    fc = rng.normal(0.0, 0.2, (n, len(registry.names)))
    fc[rng.random(fc.shape) < 0.3] = 0.0
    # Some rows with equal contributions (ties between groups and within them).
    tied = rng.random(n) < 0.3
    fc[tied] = rng.choice([-0.1, 0.0, 0.1], size=(int(tied.sum()), fc.shape[1]))
    return explanation(registry, fc)
