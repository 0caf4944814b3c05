"""Properties of the landmark features (hypothesis): no leakage from the future, row order does
not matter, undefined values are NaN with indicators and never inf, a client computed alone equals
the same client inside a batch of 10,000, every profile works, and the vectorised kernel agrees
with the naive per-client reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.build import build_features
from features.profiles import ALLIANCE6, OVERALL, PROFILES, InstrumentProfile
from features.registry import feature_registry
from tests.features.reference import reference_features
from tests.features.strategies import client_history, random_cohort

PROFILE_LIST = list(PROFILES.values())
ALL_PROFILES = pytest.mark.parametrize("profile", PROFILE_LIST, ids=list(PROFILES))
PROPERTY = settings(
    max_examples=20,
    deadline=None,  # 2 shared cores: wall-clock per example is noise
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def assert_identical(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same index, columns and bit-identical values (NaN equal to NaN); faster than pandas'."""
    assert got.index.equals(expected.index)
    assert got.columns.equals(expected.columns)
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())


def build(
    sessions: pd.DataFrame, clients: pd.DataFrame, profile: InstrumentProfile, **kw
) -> pd.DataFrame:
    return build_features(sessions, clients, profile=profile, include_covariates=True, **kw)


@ALL_PROFILES
@PROPERTY
@given(data=st.data())
def test_future_sessions_never_change_past_landmarks(profile: InstrumentProfile, data) -> None:
    sessions, clients = data.draw(client_history(profile, min_sessions=2))
    n = len(sessions)
    k = data.draw(st.integers(1, n - 1), label="k")
    past = build(sessions[sessions["session_number"] <= k], clients, profile)
    full = build(sessions, clients, profile).loc[lambda f: f.index.get_level_values(1) <= k]
    assert_identical(past, full)

    # Rewrite every appointment after k (attendance, ratings, dates): landmarks <= k unchanged.
    # The new dates keep the other history's gaps after appointment k, so they never go back.
    other, _ = data.draw(client_history(profile, min_sessions=n, max_sessions=n), label="future")
    future = sessions["session_number"] > k
    changed = sessions.copy()
    cols = ["attendance", *profile.columns]
    changed.loc[future, cols] = other.loc[future, cols].to_numpy()
    dates = other["session_date"]
    changed.loc[future, "session_date"] = (
        dates[future] - dates[k - 1] + sessions["session_date"][k - 1]
    ).to_numpy()
    again = build(changed, clients, profile).loc[lambda f: f.index.get_level_values(1) <= k]
    assert_identical(past, again)


@ALL_PROFILES
@PROPERTY
@given(data=st.data())
def test_row_order_does_not_matter(profile: InstrumentProfile, data) -> None:
    s1, c1 = data.draw(client_history(profile, client_id="b"), label="b")
    s2, c2 = data.draw(client_history(profile, client_id="a"), label="a")
    sessions = pd.concat([s1, s2], ignore_index=True)
    clients = pd.concat([c1, c2], ignore_index=True)
    expected = build(sessions, clients, profile)
    order = data.draw(st.permutations(range(len(sessions))), label="order")
    shuffled = sessions.iloc[order].reset_index(drop=True)
    got = build(shuffled, clients.iloc[::-1], profile)
    assert_identical(got, expected)


@ALL_PROFILES
@PROPERTY
@given(data=st.data())
def test_undefined_values_are_nan_with_indicators(profile: InstrumentProfile, data) -> None:
    sessions, clients = data.draw(client_history(profile, max_sessions=8))
    f = build(sessions, clients, profile)
    x = f.to_numpy()
    assert not np.isinf(x).any()
    assert len(f) == len(sessions)
    reg = feature_registry(profile, include_covariates=True)
    pos = {name: i for i, name in enumerate(reg.names)}

    def col(name: str) -> np.ndarray:
        return x[:, pos[name]]

    np.testing.assert_array_equal(col("engagement_landmark"), f.index.get_level_values(1))
    never_rated = col("engagement_never_rated") == 1.0
    np.testing.assert_array_equal(never_rated, col(f"{OVERALL}_n_rated") == 0)
    for group in reg.rating_groups:
        n_rated = col(f"{group}_n_rated")
        for stat in ("last", "last3_mean", "min", "below_cutoff"):
            np.testing.assert_array_equal(np.isnan(col(f"{group}_{stat}")), n_rated == 0)
        for stat in ("slope", "sd", "mssd", "change_first", "change_prev", "dev_own_mean"):
            np.testing.assert_array_equal(np.isnan(col(f"{group}_{stat}")), n_rated < 2)
        has = col(f"{group}_has_rupture")
        np.testing.assert_array_equal(has, col(f"{group}_ruptures_1sd") > 0)
        np.testing.assert_array_equal(np.isnan(col(f"{group}_sessions_since_rupture")), has == 0)
        assert (col(f"{group}_ruptures_2sd") <= col(f"{group}_ruptures_1sd")).all()
        assert (col(f"{group}_unrepaired") <= has).all()
        level = np.concatenate([col(f"{group}_{s}") for s in ("last", "min", "early_mean")])
        seen = level[~np.isnan(level)]
        assert ((seen >= profile.scale_min) & (seen <= profile.scale_max)).all()
        assert not (col(f"{group}_sd") < 0).any()

    never_attended = col("engagement_never_attended") == 1.0
    np.testing.assert_array_equal(never_attended, np.isnan(col("engagement_days_since_attended")))
    np.testing.assert_array_equal(never_attended, np.isnan(col("engagement_unrated_share")))
    assert (col("engagement_never_rated")[never_attended] == 1.0).all()
    rates = x[:, [i for n, i in pos.items() if n.endswith("_rate")]]
    np.testing.assert_allclose(rates.sum(axis=1), 1.0)
    assert np.isnan(col("attendance_gap_mean_days")).sum() == 1  # only at landmark 1
    binary = x[:, [pos[f.name] for f in reg.features if f.unit == "0/1"]]
    assert np.isin(binary[~np.isnan(binary)], [0.0, 1.0]).all()


@ALL_PROFILES
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_naive_reference_on_any_history(profile: InstrumentProfile, data) -> None:
    sessions, clients = data.draw(client_history(profile, max_sessions=10))
    got = build(sessions, clients, profile)
    ref = reference_features(sessions, clients, profile=profile, include_covariates=True)
    assert got.index.equals(ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-9)


@ALL_PROFILES
@pytest.mark.parametrize("landmarks", ["all", "training", "latest", 2])
def test_matches_naive_reference_on_a_cohort(profile: InstrumentProfile, landmarks) -> None:
    sessions, clients = random_cohort(25, profile, seed=17)
    got = build(sessions, clients, profile, landmarks=landmarks, k_max=8)
    ref = reference_features(
        sessions, clients, profile=profile, landmarks=landmarks, k_max=8, include_covariates=True
    )
    assert got.index.equals(ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-9)


# -- one client alone == the same client inside a batch of 10,000 -------------------------------


@pytest.fixture(scope="module")
def batch() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    sessions, clients = random_cohort(10_000, ALLIANCE6, seed=2024)
    return sessions, clients, build(sessions, clients, ALLIANCE6)


def test_clients_of_a_batch_built_alone_are_identical(batch) -> None:
    sessions, clients, features = batch
    assert features.index.get_level_values(0).nunique() == 10_000
    rng = np.random.default_rng(0)
    lengths = sessions.groupby("client_id").size()
    # A random sample plus the extremes: shortest and longest histories.
    chosen = set(rng.choice(lengths.index, 100, replace=False))
    chosen |= set(lengths.nsmallest(5).index) | set(lengths.nlargest(5).index)
    picked = sessions[sessions["client_id"].isin(chosen)]
    info = clients.set_index("client_id", drop=False)
    for cid, own in picked.groupby("client_id"):
        alone = build(own, info.loc[[cid]], ALLIANCE6)
        assert_identical(alone, features.loc[[cid]])


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_client_alone_equals_it_inside_the_batch(batch, data) -> None:
    sessions, clients, _ = batch
    s1, c1 = data.draw(client_history(ALLIANCE6, client_id="zz-new", max_sessions=14))
    alone = build(s1, c1, ALLIANCE6)
    together = build(
        pd.concat([sessions, s1], ignore_index=True),
        pd.concat([clients, c1], ignore_index=True),
        ALLIANCE6,
    )
    assert_identical(alone, together.loc[["zz-new"]])
