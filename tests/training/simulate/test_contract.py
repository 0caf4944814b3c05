"""Contract form: columns, dtypes, ids, ratings on the scale and step, the latent table,
the validator, determinism per seed, small cohorts of any size, and argument checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import contract as c
from tests.training.simulate.helpers import ALL_PROFILES
from training.simulate import Cohort, SimulationConfig, simulate_cohort

# --- contract form ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_frames_are_in_contract_form(cohorts: dict[str, Cohort], profile: str) -> None:
    cohort = cohorts[profile]
    prof = cohort.profile
    s, cl = cohort.sessions, cohort.clients
    assert list(s.columns) == [*c.SESSION_COLUMNS, *prof.columns]
    assert list(cl.columns) == [
        *c.CLIENT_REQUIRED_COLUMNS[:4],
        *c.CLIENT_OPTIONAL_COLUMNS,
        c.OUTCOME,
    ]
    assert s[c.SESSION_NUMBER].dtype == np.int64
    assert cl[c.AGE].dtype == np.int64
    assert pd.api.types.is_datetime64_any_dtype(s[c.SESSION_DATE])
    assert pd.api.types.is_datetime64_any_dtype(cl[c.INTAKE_DATE])
    assert (s[c.SESSION_DATE].dt.normalize() == s[c.SESSION_DATE]).all()
    assert all(s[col].dtype == np.float64 for col in prof.columns)
    assert s[c.CLIENT_ID].str.fullmatch(r"C\d{6}").all()
    assert cl[c.THERAPIST_ID].str.fullmatch(r"T\d{3,}").all()
    assert cl[c.CLINIC_ID].str.fullmatch(r"K\d{2}").all()
    assert cl[c.CLIENT_ID].is_unique
    assert set(s[c.ATTENDANCE].unique()) <= set(c.ATTENDANCE_CODES)
    assert set(cl[c.OUTCOME].unique()) == set(c.OUTCOME_CODES)
    # session_number is 1..n in order and dates strictly increase within a client.
    g = s.groupby(c.CLIENT_ID, sort=False)
    assert (s[c.SESSION_NUMBER] == g.cumcount() + 1).all()
    assert (g[c.SESSION_DATE].diff().dropna() > pd.Timedelta(0)).all()
    first = g[c.SESSION_DATE].first()
    intake = cl.set_index(c.CLIENT_ID)[c.INTAKE_DATE].reindex(first.index)
    assert (first >= intake).all()
    assert s[c.CLIENT_ID].nunique() == len(cl) and s[c.CLIENT_ID].isin(cl[c.CLIENT_ID]).all()
    # Clinic and therapist agree between the tables.
    by_client = cl.set_index(c.CLIENT_ID)
    for col in (c.CLINIC_ID, c.THERAPIST_ID):
        assert (s[c.CLIENT_ID].map(by_client[col]) == s[col]).all()


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_ratings_only_when_attended_on_scale_and_recording_step(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    cohort = cohorts[profile]
    prof = cohort.profile
    s = cohort.sessions
    ratings = s[list(prof.columns)]
    attended = s[c.ATTENDANCE] == c.ATTENDED
    assert ratings[~attended].isna().all().all()
    unrated = ratings[attended].isna().all(axis=1).mean()
    assert 0.01 <= unrated <= 0.08  # a few % of attended sessions are left unrated
    values = ratings.to_numpy().ravel()
    values = values[~np.isnan(values)]
    assert values.min() >= prof.scale_min and values.max() <= prof.scale_max
    step = SimulationConfig().rating_step(prof)
    on_grid = np.isclose(
        (values - prof.scale_min) / step, np.round((values - prof.scale_min) / step)
    )
    assert on_grid.all()
    assert values.round(2).tolist() == values.tolist()  # no float noise like 9.700000000000001


def test_latent_has_one_row_per_client_with_documented_columns(cohort: Cohort) -> None:
    latent = cohort.latent
    assert latent[c.CLIENT_ID].tolist() == cohort.clients[c.CLIENT_ID].tolist()
    expected = {
        "declines",
        "decline_onset",
        "decline_rate",
        "decline_final",
        "therapist_alliance_effect",
        "therapist_dropout_effect",
        "alliance_level",
        "alliance_intake_mean",
        "alliance_growth",
        "rating_noise_sd",
        "noshow_propensity",
        "planned_sessions",
        "intake_logit",
        "eventual_outcome",
        "dropout_session",
        "terminal_misses",
        "last_attended_session",
        "n_ruptures",
        "n_ruptures_repaired",
        "censored",
    }
    expected |= {f"element_dev_{e}" for e in cohort.profile.element_names}
    expected |= {f"element_weight_{e}" for e in cohort.profile.element_names}
    assert expected <= set(latent.columns)
    dropped = latent["eventual_outcome"] == c.DROPOUT
    assert latent.loc[dropped, "dropout_session"].notna().all()
    assert latent.loc[~dropped, "dropout_session"].isna().all()
    assert latent["terminal_misses"].dropna().between(0, 3).all()


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_cohort_passes_the_contract_validator(cohorts: dict[str, Cohort], profile: str) -> None:
    validation = pytest.importorskip("features.validation")
    cohort = cohorts[profile]
    report = validation.validate_tables(cohort.sessions, cohort.clients, cohort.profile)
    assert report.ok


def test_same_seed_gives_identical_frames_and_another_seed_differs() -> None:
    a = simulate_cohort(400, seed=11, profile="srs")
    b = simulate_cohort(400, seed=11, profile="srs")
    other = simulate_cohort(400, seed=12, profile="srs")
    for name in ("sessions", "clients", "latent", "ruptures"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.sessions.equals(other.sessions)
    assert not a.clients.equals(other.clients)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    profile=st.sampled_from(ALL_PROFILES),
)
def test_any_small_cohort_keeps_the_contract_invariants(n: int, seed: int, profile: str) -> None:
    cohort = simulate_cohort(n, seed=seed, profile=profile)
    s, cl = cohort.sessions, cohort.clients
    assert len(cl) == n == len(cohort.latent)
    assert s[c.CLIENT_ID].nunique() == n  # every client has a first appointment
    g = s.groupby(c.CLIENT_ID, sort=False)
    assert (s[c.SESSION_NUMBER] == g.cumcount() + 1).all()
    assert (g[c.SESSION_DATE].diff().dropna() > pd.Timedelta(0)).all()
    values = s[list(cohort.profile.columns)].to_numpy()
    on_scale = (values >= cohort.profile.scale_min) & (values <= cohort.profile.scale_max)
    assert (on_scale | np.isnan(values)).all()
    assert set(cl[c.OUTCOME].unique()) <= set(c.OUTCOME_CODES)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="n_clients must be at least 1"):
        simulate_cohort(0, seed=1)
    with pytest.raises(KeyError, match="unknown instrument profile"):
        simulate_cohort(10, seed=1, profile="phq9")
    with pytest.raises(ValueError, match="dropout_rate must be between"):
        SimulationConfig(dropout_rate=0.95)
    with pytest.raises(ValueError, match="attendance_probs must sum to 1"):
        SimulationConfig(attendance_probs=(0.5, 0.1, 0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="decline_share must be between"):
        SimulationConfig(decline_share=1.5)
    with pytest.raises(ValueError, match="decline_onset_min must be"):
        SimulationConfig(decline_onset_min=5, decline_onset_max=4)
    with pytest.raises(ValueError, match="decline rates must satisfy"):
        SimulationConfig(decline_rate_min=0.05, decline_rate_max=0.02)
