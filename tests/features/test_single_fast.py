"""The one-client path: :meth:`SessionArrays.single_client` validation and packing, and the
kernel at the edges of a history (first appointment, no rating, one appointment)."""

from __future__ import annotations

import numpy as np
import pytest

from features import kernels
from features.arrays import MAX_SESSION_NUMBER, SessionArrays, ratings_matrix
from features.profiles import ALLIANCE6
from features.registry import feature_registry
from tests.features.strategies import random_cohort


def _one(session_number: list[int], ratings: np.ndarray | None = None) -> SessionArrays:
    n = len(session_number)
    return SessionArrays.single_client(
        ALLIANCE6,
        session_number=session_number,
        session_date=[f"2024-01-{d:02d}" for d in range(1, n + 1)],
        attendance=["attended"] * n,
        ratings=np.full((6, n), 7.0) if ratings is None else ratings,
        intake_date="2023-12-30",
    )


@pytest.mark.parametrize("bad", [0, -1, MAX_SESSION_NUMBER + 1, np.iinfo(np.int64).min])
def test_session_numbers_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="'session_number' must be between 1 and"):
        _one([1, bad, 3])


def test_session_number_bounds_are_accepted() -> None:
    arrays = _one([MAX_SESSION_NUMBER, 1])
    np.testing.assert_array_equal(arrays.session_number, [1, MAX_SESSION_NUMBER])


def test_sorted_and_shuffled_requests_pack_the_same_arrays() -> None:
    rng = np.random.default_rng(3)
    ratings = rng.uniform(0, 10, (6, 9))
    ratings[rng.random((6, 9)) < 0.3] = np.nan
    numbers = [1, 2, 3, 5, 8, 9, 10, 12, 15]
    order = rng.permutation(9)
    in_order = _one(numbers, ratings)
    shuffled = SessionArrays.single_client(
        ALLIANCE6,
        session_number=[numbers[i] for i in order],
        session_date=[f"2024-01-{d:02d}" for d in np.arange(1, 10)[order]],
        attendance=["attended"] * 9,
        ratings=ratings[:, order],
    )
    for field in ("session_number", "day", "attendance", "ratings"):
        np.testing.assert_array_equal(getattr(shuffled, field), getattr(in_order, field))
    with pytest.raises(ValueError, match="duplicate 'session_number'"):
        _one([3, 1, 3])


def test_packed_arrays_never_alias_the_callers_arrays() -> None:
    ratings = np.full((6, 3), 8.0)
    numbers = np.array([1, 2, 3])
    arrays = _one(numbers.tolist(), ratings)
    arrays_from_array = SessionArrays.single_client(
        ALLIANCE6,
        session_number=numbers,
        session_date=["2024-01-01", "2024-01-02", "2024-01-03"],
        attendance=["attended"] * 3,
        ratings=ratings,
    )
    ratings[:] = 0.0
    numbers[:] = 99
    assert (arrays.ratings == 8.0).all() and (arrays_from_array.ratings == 8.0).all()
    np.testing.assert_array_equal(arrays_from_array.session_number, [1, 2, 3])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_short_histories_alone_equal_their_rows_in_a_batch(n: int) -> None:
    """Rows with no earlier sessions start every running value afresh."""
    sessions, clients = random_cohort(40, ALLIANCE6, seed=11)
    sessions = sessions[sessions["session_number"] <= n]
    clients = clients[clients["client_id"].isin(sessions["client_id"])]
    batch = SessionArrays.from_frames(sessions, clients, ALLIANCE6)
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    whole = kernels.compute_feature_matrix(batch, registry)
    for c in range(batch.n_clients):
        alone = kernels.compute_feature_matrix(batch.take_segments(np.array([c])), registry)
        np.testing.assert_array_equal(alone, whole[batch.offsets[c] : batch.offsets[c + 1]])


def test_never_rated_client_has_nan_alliance_and_flags() -> None:
    arrays = _one([1, 2, 3], np.full((6, 3), np.nan))
    registry = feature_registry(ALLIANCE6)
    x = dict(zip(registry.names, kernels.compute_feature_matrix(arrays, registry)[-1], strict=True))
    assert np.isnan(x["alliance_overall_last"]) and np.isnan(x["goals_sd"])
    assert x["engagement_never_rated"] == 1.0 and x["alliance_overall_n_rated"] == 0.0
    assert x["alliance_overall_has_rupture"] == 0.0 and x["goals_unrepaired"] == 0.0
    assert np.isnan(x["alliance_overall_sessions_since_rupture"])
    assert x["engagement_unrated_share"] == 1.0


# -- ratings_matrix: the packing of request ratings ---------------------------------------------


def _ratings_reference(
    mappings: list[dict[str, float | None]], names: tuple[str, ...]
) -> np.ndarray:
    return np.array(
        [[np.nan if m.get(e) is None else float(m[e]) for m in mappings] for e in names],
        dtype=np.float64,
    ).reshape(len(names), len(mappings))


def test_ratings_matrix_matches_a_plain_python_packing() -> None:
    rng = np.random.default_rng(4)
    names = ALLIANCE6.element_names
    mappings: list[dict[str, float | None]] = []
    for _ in range(500):
        m: dict[str, float | None] = {}
        for e in rng.permutation(list(names)).tolist():  # any key order
            u = rng.random()
            if u < 0.15:
                continue  # missing
            m[e] = None if u < 0.3 else int(rng.integers(0, 11)) if u < 0.45 else rng.random() * 10
        if rng.random() < 0.1:
            m["not_an_element"] = 3.0
        mappings.append(m)
    ratings, n_keys = ratings_matrix(mappings, ALLIANCE6)
    np.testing.assert_array_equal(ratings, _ratings_reference(mappings, names))
    assert ratings.flags.c_contiguous and ratings.dtype == np.float64
    assert n_keys.tolist() == [len(m) for m in mappings]


def test_ratings_matrix_of_nothing_and_of_empty_dicts() -> None:
    ratings, n_keys = ratings_matrix([], ALLIANCE6)
    assert ratings.shape == (len(ALLIANCE6.elements), 0) and n_keys.shape == (0,)
    ratings, n_keys = ratings_matrix([{}, {}], ALLIANCE6)
    assert np.isnan(ratings).all() and n_keys.tolist() == [0, 0]


@pytest.mark.parametrize(
    ("mappings", "error"),
    [
        ([{"trust": "high"}], TypeError),  # not a number
        ([{"trust": 5.0}, [("trust", 5.0)]], TypeError),  # not a dict
    ],
)
def test_ratings_matrix_refuses_what_is_not_a_rating(mappings: list, error: type) -> None:
    with pytest.raises(error):
        ratings_matrix(mappings, ALLIANCE6)
