"""Dropout: its rate and the intercept behind it, timing, how records end, what raises it
(attendance, age, the therapist, not gender), and censoring at extraction.

Calibration targets are checked on the shared 12,000-client cohorts (``conftest.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from features import contract as c
from tests.training.simulate.helpers import (
    ALL_PROFILES,
    dropout_share,
    ended_episodes,
    last_attended,
    rated_sessions,
    trailing_missed,
)
from training.simulate import Cohort, SimulationConfig, dropout_intercept, simulate_cohort

# --- dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_dropout_share_among_ended_episodes_is_default_within_3_points(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    share = dropout_share(ended_episodes(cohorts[profile]))
    assert abs(share - 0.28) <= 0.03, share


@pytest.mark.parametrize("rate", [0.20, 0.40])
def test_configured_dropout_rate_is_hit_within_3_points(rate: float) -> None:
    cohort = simulate_cohort(6000, seed=3, config=SimulationConfig(dropout_rate=rate))
    assert abs(dropout_share(ended_episodes(cohort)) - rate) <= 0.03


def test_dropout_intercept_override_is_used_and_lower_intercept_means_fewer_dropouts() -> None:
    low = simulate_cohort(3000, seed=5, config=SimulationConfig(dropout_intercept=-7.0))
    high = simulate_cohort(3000, seed=5, config=SimulationConfig(dropout_intercept=-3.0))
    assert dropout_intercept(SimulationConfig(dropout_intercept=-7.0)) == -7.0
    assert dropout_share(ended_episodes(low)) + 0.15 < dropout_share(ended_episodes(high))


def test_dropout_timing_is_front_loaded_share_by_session_3_in_040_060(cohort: Cohort) -> None:
    """Timing = last attended session number (0 if none) of clients labelled dropout."""
    is_dropout = (cohort.clients[c.OUTCOME] == c.DROPOUT).to_numpy()
    timing = last_attended(cohort).to_numpy()[is_dropout]
    assert 0.40 <= (timing <= 3).mean() <= 0.60


def test_at_least_70pct_of_dropout_records_end_with_1_to_3_missed(cohort: Cohort) -> None:
    trailing = trailing_missed(cohort)
    dropouts = cohort.clients.loc[cohort.clients[c.OUTCOME] == c.DROPOUT, c.CLIENT_ID]
    n = trailing.reindex(dropouts)
    assert ((n >= 1) & (n <= 3)).mean() >= 0.70
    # Completers end on their planned last session, which they attended.
    completers = cohort.clients.loc[cohort.clients[c.OUTCOME] == c.COMPLETED, c.CLIENT_ID]
    assert (trailing.reindex(completers) == 0).all()


# --- therapists ------------------------------------------------------------------------------


def test_therapist_dropout_rates_vary_more_than_binomial_noise(cohort: Cohort) -> None:
    """Chi-square of homogeneity across therapists: p < 1e-6 and dispersion ratio > 1.2."""
    ended = ended_episodes(cohort)
    per = ended.groupby(c.THERAPIST_ID)[c.OUTCOME].agg(
        n="size", k=lambda x: int((x == c.DROPOUT).sum())
    )
    p = per["k"].sum() / per["n"].sum()
    chi2 = float((((per["k"] - per["n"] * p) ** 2) / (per["n"] * p * (1 - p))).sum())
    df = len(per) - 1
    assert chi2 / df > 1.2
    assert stats.chi2.sf(chi2, df) < 1e-6


def test_therapist_random_effect_on_alliance(cohort: Cohort) -> None:
    """One-way ANOVA of each client's first rated overall alliance across therapists."""
    first = rated_sessions(cohort).groupby(c.CLIENT_ID)["overall"].first()
    therapist = cohort.clients.set_index(c.CLIENT_ID)[c.THERAPIST_ID].reindex(first.index)
    groups = [g.to_numpy() for _, g in first.groupby(therapist) if len(g) > 1]
    assert stats.f_oneway(*groups).pvalue < 1e-6


# --- attendance, covariates ------------------------------------------------------------------


def test_attendance_shares_per_slot(cohort: Cohort) -> None:
    """Attended 0.75-0.85, no-show 0.07-0.13, late cancel and cancelled 0.03-0.07 each."""
    share = cohort.sessions[c.ATTENDANCE].value_counts(normalize=True)
    assert 0.75 <= share[c.ATTENDED] <= 0.85
    assert 0.07 <= share[c.NO_SHOW] <= 0.13
    assert 0.03 <= share[c.LATE_CANCEL] <= 0.07
    assert 0.03 <= share[c.CANCELLED] <= 0.07
    assert 0.0 < share[c.RESCHEDULED] <= 0.03


def test_early_no_shows_raise_dropout_far_more_than_cancellations(cohort: Cohort) -> None:
    """Dropout with a no-show in sessions 1-3 >= 2x that with only a cancellation there."""
    s = cohort.sessions
    first3 = s[s[c.SESSION_NUMBER] <= 3]
    no_show = first3.loc[first3[c.ATTENDANCE] == c.NO_SHOW, c.CLIENT_ID].unique()
    cancel = np.setdiff1d(
        first3.loc[first3[c.ATTENDANCE] == c.CANCELLED, c.CLIENT_ID].unique(), no_show
    )
    ended = ended_episodes(cohort)
    rate_ns = dropout_share(ended[ended[c.CLIENT_ID].isin(no_show)])
    rate_cx = dropout_share(ended[ended[c.CLIENT_ID].isin(cancel)])
    assert rate_ns >= 2 * rate_cx
    assert rate_ns - rate_cx >= 0.15


def test_age_under_25_raises_dropout_by_at_least_5_points(cohort: Cohort) -> None:
    ended = ended_episodes(cohort)
    young = ended[c.AGE] < 25
    assert 0.10 <= young.mean() <= 0.35
    assert dropout_share(ended[young]) >= dropout_share(ended[~young]) + 0.05


def test_gender_has_no_effect_chi_square_p_above_001(cohort: Cohort) -> None:
    ended = ended_episodes(cohort)
    table = pd.crosstab(ended[c.GENDER], ended[c.OUTCOME] == c.DROPOUT)
    assert stats.chi2_contingency(table).pvalue > 0.01
    latent = cohort.latent.set_index(c.CLIENT_ID)
    assert set(latent.columns).isdisjoint({c.GENDER, "gender_effect"})


def test_intake_logit_orders_eventual_dropout(cohort: Cohort) -> None:
    """The oracle's linear predictor: top quartile drops out at least twice the bottom one."""
    latent = cohort.latent
    q = pd.qcut(latent["intake_logit"], 4, labels=False)
    rate = (latent["eventual_outcome"] == c.DROPOUT).groupby(q).mean()
    assert rate[3] >= 2 * rate[0]
    assert rate.is_monotonic_increasing


# --- censoring -------------------------------------------------------------------------------


def test_5_to_20pct_ongoing_and_records_truncated_at_extraction(cohort: Cohort) -> None:
    clients = cohort.clients
    ongoing = clients[c.OUTCOME] == c.ONGOING
    assert 0.05 <= ongoing.mean() <= 0.20
    assert (cohort.sessions[c.SESSION_DATE] <= cohort.extraction_date).all()
    latent = cohort.latent
    assert (latent["censored"].to_numpy() == ongoing.to_numpy()).all()
    # Observed outcomes of ended episodes are the eventual ones.
    ended = ~ongoing.to_numpy()
    assert (latent["eventual_outcome"][ended] == clients[c.OUTCOME][ended]).all()
    # Some ongoing clients are on their way out: censoring hides dropouts, not just completers.
    assert (latent.loc[ongoing.to_numpy(), "eventual_outcome"] == c.DROPOUT).any()


def test_completers_attended_exactly_their_planned_sessions(cohort: Cohort) -> None:
    s = cohort.sessions
    attended = s[s[c.ATTENDANCE] == c.ATTENDED].groupby(c.CLIENT_ID).size()
    latent = cohort.latent.set_index(c.CLIENT_ID)
    done = cohort.clients.loc[cohort.clients[c.OUTCOME] == c.COMPLETED, c.CLIENT_ID]
    assert (attended.reindex(done) == latent.loc[done, "planned_sessions"]).all()
