"""The driver writer: ranking by |contribution|, ``top``, one writer per model, and errors
that name the problem (models/drivers/writer.py, describe_drivers)."""

from __future__ import annotations

import numpy as np
import pytest

import models.results
from features.build import landmark_rows, pack_frames
from features.kernels import compute_feature_matrix
from features.registry import feature_registry
from models.drivers import LOWERS, RAISES, Driver, DriverWriter, describe_drivers
from tests.features.strategies import random_cohort
from tests.models.drivers.helpers import (
    ALLIANCE6,
    SRS,
    client,
    describe,
    explanation,
    random_explanation,
)


def test_ranking_top_and_zero_contributions() -> None:
    arrays = client(
        ratings={"goals": [8.6, 8.4, 7.0, 6.1]}, attendance=["attended"] * 3 + ["attended"]
    )
    contributions = {
        "goals_slope": 0.2,
        "trust_last": -0.5,
        "attendance_attended_rate": 0.35,
        "engagement_landmark": 0.1,
    }
    drivers, _ = describe(arrays, contributions, top=3)
    assert [d.group for d in drivers] == ["trust", "attendance", "goals"]
    assert [d.contribution for d in drivers] == [-0.5, 0.35, 0.2]
    assert [d.direction for d in drivers] == [LOWERS, RAISES, RAISES]
    assert [d.group for d in describe(arrays, contributions, top=1)[0]] == ["trust"]
    assert len(describe(arrays, contributions, top=10)[0]) == 4
    assert describe(arrays, contributions, top=0)[0] == []


def test_errors_name_the_problem() -> None:
    arrays = client(attendance=["attended", "attended"])
    registry = feature_registry(ALLIANCE6)
    rows = landmark_rows(arrays, "latest")
    X = compute_feature_matrix(arrays, registry, rows)
    e = explanation(registry, np.zeros((1, X.shape[1])))
    with pytest.raises(ValueError, match="top must be >= 0"):
        describe_drivers(arrays, rows, registry, X, e, top=-1)
    with pytest.raises(ValueError, match="same rows"):
        describe_drivers(arrays, np.array([0, 1]), registry, X, e)
    with pytest.raises(ValueError, match="inside the session arrays"):
        describe_drivers(arrays, np.array([5]), registry, X, e)
    other = feature_registry(ALLIANCE6, include_covariates=True)
    e_other = explanation(other, np.zeros((1, len(other.names))))
    writer = DriverWriter.build(registry, e.group_names)
    with pytest.raises(ValueError, match="features differ from the registry's"):
        writer.describe(arrays, rows, X, e_other)
    with pytest.raises(ValueError, match="'client' is not in the feature registry"):
        describe_drivers(arrays, rows, registry, X, e_other)
    srs = feature_registry(SRS)
    with pytest.raises(ValueError, match="different instrument profiles"):
        describe_drivers(
            arrays,
            rows,
            srs,
            np.zeros((1, len(srs.names))),
            explanation(srs, np.zeros((1, len(srs.names)))),
        )


def test_one_writer_describes_any_batch_of_its_model() -> None:
    registry = feature_registry(SRS, include_covariates=True)
    sessions, clients = random_cohort(20, SRS, seed=3)
    arrays = pack_frames(sessions, clients, SRS)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = random_explanation(registry, rows.shape[0], seed=2)
    writer = DriverWriter.build(registry, e.group_names)
    out = writer.describe(arrays, rows, X, e)
    assert out == describe_drivers(arrays, rows, registry, X, e)
    assert writer.describe(arrays, rows, X, e) == out  # nothing carried over between calls
    assert all(type(d) is models.results.Driver for drivers in out for d in drivers)
    assert Driver is models.results.Driver


def test_the_writer_refuses_other_groupings() -> None:
    registry = feature_registry(ALLIANCE6)
    with pytest.raises(ValueError, match="'therapist' is not in the feature registry"):
        DriverWriter.build(registry, (*registry.groups, "therapist"))
    arrays = client(attendance=["attended", "attended"])
    rows = landmark_rows(arrays, "latest")
    X = compute_feature_matrix(arrays, registry, rows)
    e = explanation(registry, np.zeros((1, X.shape[1])))
    writer = DriverWriter.build(registry, tuple(reversed(e.group_names)))
    with pytest.raises(ValueError, match="groups differ from the driver writer's"):
        writer.describe(arrays, rows, X, e)


@pytest.mark.parametrize("n", [1, 30])
@pytest.mark.parametrize("bad", [-1, 3])
def test_rows_outside_the_arrays_are_refused(n: int, bad: int) -> None:
    arrays = client(attendance=["attended"] * 3)
    registry = feature_registry(ALLIANCE6)
    rows = np.full(n, 2, dtype=np.int64)
    X = compute_feature_matrix(arrays, registry, rows)
    e = explanation(registry, np.full((n, X.shape[1]), 0.1))
    assert len(describe_drivers(arrays, rows, registry, X, e)) == n
    rows[-1] = bad
    with pytest.raises(ValueError, match="inside the session arrays"):
        describe_drivers(arrays, rows, registry, X, e)
