"""The numpy feature kernel: what counts as a rated session (``rated_values``), chunked batches
equal to one pass, short histories alone equal to their rows in a batch, registries that order or
pick columns differently, and no compiled code."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import features
from features import kernels
from features.arrays import SessionArrays
from features.build import pack_frames
from features.contract import ATTENDANCE_CODES, ATTENDED
from features.profiles import ALLIANCE6, PROFILES, InstrumentProfile
from features.registry import Feature, FeatureRegistry, feature_registry
from tests.features.packing import one_client
from tests.features.reference import reference_rated_values
from tests.features.strategies import random_cohort

NAN = math.nan
INF = math.inf


def test_rated_values_by_hand() -> None:
    ratings = np.array(
        [
            # empathy, acceptance, trust, goals, collaboration, communication
            [8.0, 9.0, NAN, NAN, NAN, NAN],  # attended, two elements rated
            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # a no-show: its ratings are ignored
            [NAN, NAN, NAN, NAN, NAN, NAN],  # attended, nothing rated
            [10.0, 7.0, 7.0, INF, NAN, 6.5],  # attended: inf counts as not rated
            [NAN, NAN, NAN, NAN, NAN, 9.0],  # a late cancellation
        ]
    ).T
    arrays = one_client(
        ALLIANCE6,
        session_number=[1, 2, 3, 4, 5],
        session_date=["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22", "2024-01-29"],
        attendance=["attended", "no_show", "attended", "attended", "late_cancel"],
        ratings=ratings,
    )
    expected = np.array(
        [
            [8.0, NAN, NAN, 10.0, NAN],
            [9.0, NAN, NAN, 7.0, NAN],
            [NAN, NAN, NAN, 7.0, NAN],
            [NAN, NAN, NAN, NAN, NAN],
            [NAN, NAN, NAN, NAN, NAN],
            [NAN, NAN, NAN, 6.5, NAN],
            [8.5, NAN, NAN, (10.0 + 7.0 + 7.0 + 6.5) / 4, NAN],  # the element mean
        ]
    )
    got = kernels.rated_values(arrays)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float64

    registry = feature_registry(ALLIANCE6)
    row = dict(
        zip(registry.names, kernels.compute_feature_matrix(arrays, registry)[-1], strict=True)
    )
    assert row["alliance_overall_last"] == 7.625
    assert row["alliance_overall_min"] == 7.625
    assert row["alliance_overall_n_rated"] == 2.0
    assert row["engagement_unrated_share"] == pytest.approx(1 / 3)  # 3 attended, 2 rated
    assert row["trust_last"] == 7.0 and row["trust_n_rated"] == 1.0
    assert math.isnan(row["goals_last"]) and row["goals_n_rated"] == 0.0
    assert row["alliance_overall_any_element_below_cutoff"] == 1.0  # 6.5 < 8


def _cohort_with_ignored_ratings(profile: InstrumentProfile, seed: int) -> SessionArrays:
    """A random cohort, plus ratings on missed appointments and some infinite ratings."""
    sessions, clients = random_cohort(80, profile, seed=seed)
    arrays = pack_frames(sessions, clients, profile)
    rng = np.random.default_rng(seed)
    ratings = arrays.ratings.copy()
    fill = np.isnan(ratings) & (rng.random(ratings.shape) < 0.5)
    ratings[fill] = rng.uniform(profile.scale_min, profile.scale_max, int(fill.sum()))
    ratings[rng.random(ratings.shape) < 0.02] = INF
    return replace(arrays, ratings=ratings)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_rated_values_match_the_readable_definition(profile: InstrumentProfile) -> None:
    arrays = _cohort_with_ignored_ratings(profile, seed=3)
    codes = [ATTENDANCE_CODES[a] for a in arrays.attendance.tolist()]
    assert not np.isnan(
        arrays.ratings[:, arrays.attendance != ATTENDANCE_CODES.index(ATTENDED)]
    ).all()
    expected = reference_rated_values(codes, arrays.ratings.tolist(), profile)
    np.testing.assert_array_equal(kernels.rated_values(arrays), np.array(expected))


def test_features_count_exactly_the_rated_values() -> None:
    """Every rating group's last value and count of rated sessions come from rated_values,
    also when missed appointments carry ratings and some ratings are infinite."""
    arrays = _cohort_with_ignored_ratings(ALLIANCE6, seed=8)
    registry = feature_registry(ALLIANCE6)
    x = kernels.compute_feature_matrix(arrays, registry)
    values = kernels.rated_values(arrays)
    col = {name: i for i, name in enumerate(registry.names)}
    for g, group in enumerate(registry.rating_groups):
        for c in range(arrays.n_clients):
            a, b = arrays.offsets[c], arrays.offsets[c + 1]
            seen = values[g, a:b].tolist()
            for i in range(b - a):
                rated = [v for v in seen[: i + 1] if not math.isnan(v)]
                assert x[a + i, col[f"{group}_n_rated"]] == len(rated)
                last = x[a + i, col[f"{group}_last"]]
                assert (last == rated[-1]) if rated else math.isnan(last)


def test_chunked_batches_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions, clients = random_cohort(120, ALLIANCE6, seed=9)
    arrays = pack_frames(sessions, clients, ALLIANCE6)
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    rows = np.random.default_rng(0).permutation(arrays.n_rows)[: arrays.n_rows // 2]
    assert arrays.n_rows <= kernels.CHUNK_ROWS
    whole = kernels.compute_feature_matrix(arrays, registry, rows)
    for chunk in (1, 50, 400):
        monkeypatch.setattr(kernels, "CHUNK_ROWS", chunk)
        chunked = kernels.compute_feature_matrix(arrays, registry, rows)
        np.testing.assert_array_equal(chunked, whole)
        assert chunked.flags.f_contiguous


def test_segments_in_any_order_give_the_same_rows() -> None:
    """Length-sorted segments are only faster: unsorted ones make many short runs."""
    sessions, clients = random_cohort(150, ALLIANCE6, seed=4)
    arrays = pack_frames(sessions, clients, ALLIANCE6)
    registry = feature_registry(ALLIANCE6)
    order = np.random.default_rng(1).permutation(arrays.n_clients)
    shuffled = arrays.take_segments(order)
    assert len(shuffled.runs) > len(arrays.runs)
    whole = kernels.compute_feature_matrix(arrays, registry)
    rows = np.concatenate([np.arange(arrays.offsets[c], arrays.offsets[c + 1]) for c in order])
    np.testing.assert_array_equal(kernels.compute_feature_matrix(shuffled, registry), whole[rows])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_short_histories_alone_equal_their_rows_in_a_batch(n: int) -> None:
    """Rows with no earlier sessions start every running value afresh."""
    sessions, clients = random_cohort(40, ALLIANCE6, seed=11)
    sessions = sessions[sessions["session_number"] <= n]
    clients = clients[clients["client_id"].isin(sessions["client_id"])]
    batch = pack_frames(sessions, clients, ALLIANCE6)
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    whole = kernels.compute_feature_matrix(batch, registry)
    for c in range(batch.n_clients):
        alone = kernels.compute_feature_matrix(batch.take_segments(np.array([c])), registry)
        np.testing.assert_array_equal(alone, whole[batch.offsets[c] : batch.offsets[c + 1]])


def test_never_rated_client_has_nan_alliance_and_flags() -> None:
    arrays = one_client(
        ALLIANCE6,
        session_number=[1, 2, 3],
        session_date=["2024-01-01", "2024-01-02", "2024-01-03"],
        attendance=["attended"] * 3,
        ratings=np.full((6, 3), np.nan),
        intake_date="2023-12-30",
    )
    registry = feature_registry(ALLIANCE6)
    x = dict(zip(registry.names, kernels.compute_feature_matrix(arrays, registry)[-1], strict=True))
    assert np.isnan(x["alliance_overall_last"]) and np.isnan(x["goals_sd"])
    assert x["engagement_never_rated"] == 1.0 and x["alliance_overall_n_rated"] == 0.0
    assert x["alliance_overall_has_rupture"] == 0.0 and x["goals_unrepaired"] == 0.0
    assert np.isnan(x["alliance_overall_sessions_since_rupture"])
    assert x["engagement_unrated_share"] == 1.0


def test_registries_that_order_or_pick_columns_differently() -> None:
    sessions, clients = random_cohort(20, ALLIANCE6, seed=6)
    arrays = pack_frames(sessions, clients, ALLIANCE6)
    full = feature_registry(ALLIANCE6, include_covariates=True)
    expected = kernels.compute_feature_matrix(arrays, full)

    restored = FeatureRegistry.from_dict(full.to_dict())  # equal, not the same object
    np.testing.assert_array_equal(kernels.compute_feature_matrix(arrays, restored), expected)
    assert restored.statistics_table is restored.statistics_table  # computed once

    picks = np.random.default_rng(2).permutation(len(full.features))[:50]
    custom = FeatureRegistry(ALLIANCE6, tuple(full.features[i] for i in picks))
    got = kernels.compute_feature_matrix(arrays, custom)
    np.testing.assert_array_equal(got, expected[:, picks])
    assert got.flags.f_contiguous

    unknown = Feature("engagement_mood", "engagement", "Not a feature.", "0/1", "engagement")
    with pytest.raises(RuntimeError, match="does not compute \\['engagement_mood'\\]"):
        kernels.compute_feature_matrix(
            arrays, FeatureRegistry(ALLIANCE6, (*full.features, unknown))
        )


def test_the_features_package_imports_no_compiled_module() -> None:
    """Issue #7: the project installs from wheels, with no C compiler."""
    for path in Path(features.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.endswith("_kernel") for n in names), f"{path.name} imports {names}"
