"""Calibration and contract tests of the cohort simulator.

One seeded cohort of 12,000 clients per instrument profile is shared by the module, so every
tolerance below is several standard errors wide (the SE of a 28% share among ~10,500 ended
episodes is ~0.45 points; of Cohen's d between ~2,900 dropouts and ~7,600 completers ~0.02).
"""

from __future__ import annotations

import re
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

from features import contract as c
from features.profiles import PROFILES
from training.commands import simulate as simulate_command
from training.simulate import (
    Cohort,
    SimulationConfig,
    dropout_intercept,
    is_simulated,
    simulate_cohort,
    write_cohort,
)

N_CLIENTS = 12_000
SEED = 2024
ALL_PROFILES = tuple(PROFILES)


@pytest.fixture(scope="module")
def cohorts() -> dict[str, Cohort]:
    return {name: simulate_cohort(N_CLIENTS, seed=SEED, profile=name) for name in ALL_PROFILES}


@pytest.fixture(scope="module")
def cohort(cohorts: dict[str, Cohort]) -> Cohort:
    return cohorts["alliance6"]


# --- helpers ---------------------------------------------------------------------------------


def _ended(cohort: Cohort) -> pd.DataFrame:
    return cohort.clients[cohort.clients[c.OUTCOME] != c.ONGOING]


def _dropout_share(clients: pd.DataFrame) -> float:
    return float((clients[c.OUTCOME] == c.DROPOUT).mean())


def _rated(cohort: Cohort) -> pd.DataFrame:
    """Attended, rated sessions with ``overall`` (mean of elements) and ``rated_index`` (0-based)."""
    cols = list(cohort.profile.columns)
    s = cohort.sessions
    rated = s[(s[c.ATTENDANCE] == c.ATTENDED) & s[cols].notna().all(axis=1)]
    return rated.assign(
        overall=rated[cols].mean(axis=1),
        rated_index=rated.groupby(c.CLIENT_ID).cumcount(),
    )


def _cohens_d(values: pd.Series, outcome: pd.Series) -> float:
    """Pooled-SD Cohen's d, completers minus dropouts."""
    outcome = outcome.reindex(values.index)
    a = values[outcome == c.COMPLETED]
    b = values[outcome == c.DROPOUT]
    pooled = np.sqrt(((len(a) - 1) * a.var() + (len(b) - 1) * b.var()) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled)


def _early_d(cohort: Cohort, column: str = "overall") -> float:
    """d of the mean of ``column`` over each client's first 3 rated sessions."""
    rated = _rated(cohort)
    early = rated[rated["rated_index"] < 3].groupby(c.CLIENT_ID)[column].mean()
    return _cohens_d(early, cohort.clients.set_index(c.CLIENT_ID)[c.OUTCOME])


def _last_attended(cohort: Cohort) -> pd.Series:
    """Per client, the session_number of the last attended appointment (0 if none)."""
    s = cohort.sessions
    last = s[s[c.ATTENDANCE] == c.ATTENDED].groupby(c.CLIENT_ID)[c.SESSION_NUMBER].max()
    return last.reindex(cohort.clients[c.CLIENT_ID], fill_value=0)


def _trailing_missed(cohort: Cohort) -> pd.Series:
    """Per client, how many appointments at the end of the record were no-show/late-cancel."""
    s = cohort.sessions
    missed = s[c.ATTENDANCE].isin(c.MISSED_CODES).to_numpy()
    # Count of consecutive missed rows ending at each row, reset by any other code.
    breaks = (~missed).cumsum()
    run = pd.Series(missed.astype(int)).groupby([s[c.CLIENT_ID].to_numpy(), breaks]).cumsum()
    return run.groupby(s[c.CLIENT_ID].to_numpy()).last()


# --- dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_dropout_share_among_ended_episodes_is_default_within_3_points(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    share = _dropout_share(_ended(cohorts[profile]))
    assert abs(share - 0.28) <= 0.03, share


@pytest.mark.parametrize("rate", [0.20, 0.40])
def test_configured_dropout_rate_is_hit_within_3_points(rate: float) -> None:
    cohort = simulate_cohort(6000, seed=3, config=SimulationConfig(dropout_rate=rate))
    assert abs(_dropout_share(_ended(cohort)) - rate) <= 0.03


def test_dropout_intercept_override_is_used_and_lower_intercept_means_fewer_dropouts() -> None:
    low = simulate_cohort(3000, seed=5, config=SimulationConfig(dropout_intercept=-7.0))
    high = simulate_cohort(3000, seed=5, config=SimulationConfig(dropout_intercept=-3.0))
    assert dropout_intercept(SimulationConfig(dropout_intercept=-7.0)) == -7.0
    assert _dropout_share(_ended(low)) + 0.15 < _dropout_share(_ended(high))


def test_dropout_timing_is_front_loaded_share_by_session_3_in_040_060(cohort: Cohort) -> None:
    """Timing = last attended session number (0 if none) of clients labelled dropout."""
    is_dropout = (cohort.clients[c.OUTCOME] == c.DROPOUT).to_numpy()
    timing = _last_attended(cohort).to_numpy()[is_dropout]
    assert 0.40 <= (timing <= 3).mean() <= 0.60


def test_at_least_70pct_of_dropout_records_end_with_1_to_3_missed(cohort: Cohort) -> None:
    trailing = _trailing_missed(cohort)
    dropouts = cohort.clients.loc[cohort.clients[c.OUTCOME] == c.DROPOUT, c.CLIENT_ID]
    n = trailing.reindex(dropouts)
    assert ((n >= 1) & (n <= 3)).mean() >= 0.70
    # Completers end on their planned last session, which they attended.
    completers = cohort.clients.loc[cohort.clients[c.OUTCOME] == c.COMPLETED, c.CLIENT_ID]
    assert (trailing.reindex(completers) == 0).all()


# --- alliance --------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_early_alliance_dropout_d_between_040_and_070(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    """Sharf et al. 2010: d = 0.55. Overall = mean of elements, first 3 rated sessions."""
    assert 0.40 <= _early_d(cohorts[profile]) <= 0.70


@pytest.mark.parametrize(
    ("profile", "goal_like", "bond_like"),
    [
        ("alliance6", "alliance_goals", "alliance_empathy"),
        ("srs", "alliance_goals", "alliance_relationship"),
        ("wai_sr", "alliance_goal", "alliance_bond"),
        ("wai_sr", "alliance_task", "alliance_bond"),
    ],
)
def test_goal_and_task_agreement_predict_dropout_more_than_bond_early_by_008_d(
    cohorts: dict[str, Cohort], profile: str, goal_like: str, bond_like: str
) -> None:
    """Webb et al. 2011: goal/task agreement predicts more than the bond."""
    cohort = cohorts[profile]
    assert _early_d(cohort, goal_like) >= _early_d(cohort, bond_like) + 0.08


def test_bond_elements_are_rated_higher_than_goal_elements(cohorts: dict[str, Cohort]) -> None:
    a6 = _rated(cohorts["alliance6"])
    assert a6["alliance_empathy"].mean() > a6["alliance_goals"].mean()
    wai = _rated(cohorts["wai_sr"])
    assert wai["alliance_bond"].mean() > wai["alliance_goal"].mean()


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_alliance_grows_over_first_4_sessions_then_plateaus(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    """A fixed panel (clients with >= 10 rated sessions) so dropout selection plays no part.

    The typical trajectory (clients without a latent decline) rises by >= 2% of the scale over
    the first 4 rated sessions, then moves by at most a quarter of that between the 7th and the
    10th. With the deteriorating clients included the panel mean may sag late, by at most 2.5%
    of the scale.
    """
    cohort = cohorts[profile]
    rated = _rated(cohort)
    panel = rated[rated.groupby(c.CLIENT_ID)["rated_index"].transform("max") >= 9]
    declines = panel[c.CLIENT_ID].map(cohort.latent.set_index(c.CLIENT_ID)["declines"])
    scale = cohort.profile.scale_range
    by_index = panel[~declines].groupby("rated_index")["overall"].mean() / scale
    early_gain = by_index[3] - by_index[0]
    late_change = abs(by_index[9] - by_index[6])
    assert early_gain >= 0.02  # at least 2% of the scale over the first 4 rated sessions
    assert late_change <= early_gain / 4
    everyone = panel.groupby("rated_index")["overall"].mean() / scale
    assert everyone[3] - everyone[0] >= 0.02
    assert abs(everyone[9] - everyone[6]) <= 0.025


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_clients_vary_session_to_session(cohorts: dict[str, Cohort], profile: str) -> None:
    """>= 90% of clients with >= 5 rated sessions have a non-constant overall alliance."""
    rated = _rated(cohorts[profile])
    sd = rated.groupby(c.CLIENT_ID)["overall"].agg(["std", "size"])
    assert (sd.loc[sd["size"] >= 5, "std"] > 0).mean() >= 0.90


def test_srs_ceiling_half_of_totals_at_least_36_median_35_to_39(
    cohorts: dict[str, Cohort],
) -> None:
    """Duncan et al. 2003: SRS totals mostly 36-40 of 40."""
    cohort = cohorts["srs"]
    total = _rated(cohort)[list(cohort.profile.columns)].sum(axis=1)
    assert (total >= 36).mean() >= 0.50
    assert 35 <= total.median() <= 39


@pytest.mark.parametrize("profile", ["alliance6", "wai_sr"])
def test_other_profiles_have_the_srs_ceiling_shape_on_their_scale(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    """Median at 87.5-97.5% of the scale; >= half of sessions at >= 90% of it, as for SRS."""
    cohort = cohorts[profile]
    prof = cohort.profile
    position = (_rated(cohort)["overall"] - prof.scale_min) / prof.scale_range
    assert 0.875 <= position.median() <= 0.975
    assert (position >= 0.9).mean() >= 0.50
    assert (position >= 0.999).mean() >= 0.03  # some sessions at the very top


# --- therapists ------------------------------------------------------------------------------


def test_therapist_dropout_rates_vary_more_than_binomial_noise(cohort: Cohort) -> None:
    """Chi-square of homogeneity across therapists: p < 1e-6 and dispersion ratio > 1.2."""
    ended = _ended(cohort)
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
    first = _rated(cohort).groupby(c.CLIENT_ID)["overall"].first()
    therapist = cohort.clients.set_index(c.CLIENT_ID)[c.THERAPIST_ID].reindex(first.index)
    groups = [g.to_numpy() for _, g in first.groupby(therapist) if len(g) > 1]
    assert stats.f_oneway(*groups).pvalue < 1e-6


# --- ruptures --------------------------------------------------------------------------------


def test_rupture_frequency_and_60pct_repaired_within_10_points(cohort: Cohort) -> None:
    rup = cohort.ruptures
    cfg = SimulationConfig()
    attended = cohort.sessions[c.ATTENDANCE] == c.ATTENDED
    eligible = (attended.groupby(cohort.sessions[c.CLIENT_ID]).sum() - 1).clip(lower=0).sum()
    # Per attended session from the second (a little under the rate: one open at a time).
    assert 0.7 * cfg.rupture_rate <= len(rup) / eligible <= 1.1 * cfg.rupture_rate
    assert abs(rup["repaired"].mean() - 0.60) <= 0.10
    assert rup["repair_lag_sessions"].between(1, 3).all()
    assert (rup["n_elements"] >= 1).all()
    assert (rup["depth_sd"] >= cfg.rupture_depth_min_sd).all()
    # Repairs observed in the record happen after onset; unrepaired ruptures have none.
    seen = rup["repaired_session"].notna()
    assert rup.loc[seen, "repaired"].all()
    assert (rup.loc[seen, "repaired_session"] > rup.loc[seen, "onset_session"]).all()
    latent = cohort.latent.set_index(c.CLIENT_ID)
    assert latent["n_ruptures"].sum() == len(rup)


def test_ruptures_show_as_drops_of_at_least_1_sd_in_70pct(cohort: Cohort) -> None:
    """Mean fall over the hit elements, onset vs the previous rated session, in own-SD units."""
    prof = cohort.profile
    rated = _rated(cohort)
    prev = rated.assign(
        onset_session=rated.groupby(c.CLIENT_ID)[c.SESSION_NUMBER].shift(-1)
    ).dropna(subset=["onset_session"])
    prev["onset_session"] = prev["onset_session"].astype(np.int64)
    m = cohort.ruptures.merge(
        rated, left_on=[c.CLIENT_ID, "onset_session"], right_on=[c.CLIENT_ID, c.SESSION_NUMBER]
    ).merge(prev, on=[c.CLIENT_ID, "onset_session"], suffixes=("", "_prev"))
    assert len(m) >= 0.8 * len(cohort.ruptures)
    own_sd = (
        cohort.latent.set_index(c.CLIENT_ID)["rating_noise_sd"].reindex(m[c.CLIENT_ID]).to_numpy()
        * prof.scale_range
    )
    hit = np.column_stack(
        [m["elements"].str.split("|").map(lambda es, e=e: e in es) for e in prof.element_names]
    )
    before = m[[f"{col}_prev" for col in prof.columns]].to_numpy()
    after = m[list(prof.columns)].to_numpy()
    drop = ((before - after) * hit).sum(axis=1) / hit.sum(axis=1) / own_sd
    assert (drop >= 1.0).mean() >= 0.70


def test_unrepaired_ruptures_raise_dropout_repaired_do_not(cohort: Cohort) -> None:
    """Eventual dropout after a rupture vs all clients who reached the same attended session.

    Unrepaired: at least 6 points above that landmark baseline. Repaired: within 4 points.
    Uses the uncensored truth in ``latent`` so censoring plays no part.
    """
    latent = cohort.latent.set_index(c.CLIENT_ID)
    done = latent[~latent["censored"]]
    n_att = (
        cohort.sessions[cohort.sessions[c.ATTENDANCE] == c.ATTENDED]
        .groupby(c.CLIENT_ID)
        .size()
        .reindex(done.index, fill_value=0)
    )
    dropped = done["eventual_outcome"] == c.DROPOUT
    baseline = {k: dropped[n_att >= k].mean() for k in range(1, int(n_att.max()) + 1)}
    rup = cohort.ruptures[cohort.ruptures[c.CLIENT_ID].isin(done.index)]
    rup = rup.assign(
        dropped=dropped.reindex(rup[c.CLIENT_ID]).to_numpy(),
        baseline=rup["onset_attended_index"].map(baseline),
    )
    unrepaired = rup[~rup["repaired"]]
    repaired = rup[rup["repaired"]]
    assert unrepaired["dropped"].mean() >= unrepaired["baseline"].mean() + 0.06
    assert abs(repaired["dropped"].mean() - repaired["baseline"].mean()) <= 0.04


# --- alliance deterioration ------------------------------------------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_share_of_declining_clients_matches_the_parameter_within_15_per_mille(
    cohorts: dict[str, Cohort], profile: str
) -> None:
    """SE of the share among 12,000 clients ~0.004; onset and rate within their ranges."""
    cfg = SimulationConfig()
    latent = cohorts[profile].latent
    declines = latent["declines"]
    assert declines.dtype == bool
    assert abs(declines.mean() - cfg.decline_share) <= 0.015
    onset = latent.loc[declines, "decline_onset"]
    rate = latent.loc[declines, "decline_rate"]
    assert onset.between(cfg.decline_onset_min, cfg.decline_onset_max).all()
    assert set(onset.unique()) == set(range(cfg.decline_onset_min, cfg.decline_onset_max + 1))
    assert rate.between(cfg.decline_rate_min, cfg.decline_rate_max).all()
    assert latent.loc[~declines, "decline_onset"].isna().all()
    assert latent.loc[~declines, "decline_rate"].isna().all()
    final = latent["decline_final"]
    assert (final[~declines] == 0).all()
    assert final.between(0, cfg.decline_max).all()
    assert (final == cfg.decline_max).any()  # the cap is reached by some who stay long


def test_decline_share_zero_switches_the_process_off() -> None:
    cohort = simulate_cohort(1500, seed=8, config=SimulationConfig(decline_share=0.0))
    assert not cohort.latent["declines"].any()
    assert (cohort.latent["decline_final"] == 0).all()


@pytest.mark.parametrize(
    ("profile", "goal_like", "bond_like"),
    [
        ("alliance6", "alliance_goals", "alliance_empathy"),
        ("srs", "alliance_goals", "alliance_relationship"),
        ("wai_sr", "alliance_goal", "alliance_bond"),
    ],
)
def test_decline_shows_in_the_ratings_goal_more_than_bond(
    cohorts: dict[str, Cohort], profile: str, goal_like: str, bond_like: str
) -> None:
    """Rating 3 attended sessions after onset minus at onset, as a share of the scale.

    Decliners: the element mean falls by >= 5% of the scale (3 steps of 2-5%, less what the
    ceiling hides) and the goal-like element falls by >= 2 points of the scale more than the
    bond-like one. Non-decliners at the same attended sessions: within 0.5% of no change.
    """
    cohort = cohorts[profile]
    cols = list(cohort.profile.columns)
    s = cohort.sessions
    att = s[s[c.ATTENDANCE] == c.ATTENDED]
    att = att.assign(
        overall=att[cols].mean(axis=1), k=att.groupby(c.CLIENT_ID).cumcount() + 1
    ).set_index([c.CLIENT_ID, "k"])
    latent = cohort.latent.set_index(c.CLIENT_ID)
    onset = latent["decline_onset"].dropna().astype(np.int64)
    # Non-decliners get the decliners' onsets, so both groups are compared at the same sessions.
    pseudo = onset.sample(n=int((~latent["declines"]).sum()), replace=True, random_state=0)
    pseudo.index = latent.index[~latent["declines"]]

    def change(column: str, at: pd.Series) -> float:
        before = att[column].reindex(pd.MultiIndex.from_arrays([at.index, at.to_numpy()]))
        after = att[column].reindex(pd.MultiIndex.from_arrays([at.index, at.to_numpy() + 3]))
        return float(np.nanmean(after.to_numpy() - before.to_numpy())) / cohort.profile.scale_range

    assert change("overall", onset) <= -0.05
    assert abs(change("overall", pseudo)) <= 0.005
    assert change(goal_like, onset) <= change(bond_like, onset) - 0.02


def test_declines_are_slopes_not_ruptures() -> None:
    """One decline step, on the steepest facet at the fastest rate, is shallower than the
    shallowest rupture (2 own SDs) of a client of average variability."""
    cfg = SimulationConfig()
    steepest = cfg.decline_rate_max * max(m for _, m in cfg.decline_facet_multipliers)
    average_sd = float(np.hypot(cfg.session_noise_sd, cfg.element_noise_sd))
    assert steepest < cfg.rupture_depth_min_sd * average_sd


def test_rupture_rate_does_not_depend_on_decline(cohort: Cohort) -> None:
    """Declines never create rupture records: ruptures per eligible attended session (from the
    second) agree within 15% between clients with and without a decline."""
    s = cohort.sessions
    eligible = (s[c.ATTENDANCE] == c.ATTENDED).groupby(s[c.CLIENT_ID]).sum().sub(1).clip(lower=0)
    latent = cohort.latent.set_index(c.CLIENT_ID)
    declines = latent["declines"]
    rate = {
        flag: latent.loc[declines == flag, "n_ruptures"].sum()
        / eligible.reindex(latent.index[declines == flag]).sum()
        for flag in (True, False)
    }
    assert abs(rate[True] / rate[False] - 1) <= 0.15


def test_declining_clients_drop_out_more_within_early_alliance_quintiles(cohort: Cohort) -> None:
    """Eventual (uncensored) dropout, decliners minus the rest, within quintiles of the observed
    early alliance (mean of the first 3 rated sessions): >= 8 points in every quintile and
    >= 12 points on average (measured ~17-22 points)."""
    rated = _rated(cohort)
    early = rated[rated["rated_index"] < 3].groupby(c.CLIENT_ID)["overall"].mean()
    latent = cohort.latent.set_index(c.CLIENT_ID).reindex(early.index)
    quintile = pd.qcut(early.rank(method="first"), 5, labels=False)
    dropped = latent["eventual_outcome"] == c.DROPOUT
    rates = dropped.groupby([quintile, latent["declines"]]).mean().unstack()
    excess = rates[True] - rates[False]
    assert (excess >= 0.08).all(), excess.round(3).tolist()
    assert excess.mean() >= 0.12


def test_trajectory_features_add_auroc_to_early_alliance_and_attendance() -> None:
    """The falling-alliance signal reaches the model features.

    Landmark features (``landmarks="training"``) of a 6,000-client cohort, split 70/30 by
    client; logistic regression (median imputation with missing indicators, standardised,
    C = 1) on the early-alliance means plus the attendance group versus on every feature. The
    full model must gain >= 0.01 test AUROC (measured 0.032 here; mean 0.041, min 0.020 over
    10 seeds; ~0.05 on 20,000 clients).
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from features.build import build_features, landmark_labels

    cohort = simulate_cohort(6000, seed=SEED)
    x = build_features(
        cohort.sessions, cohort.clients, profile=cohort.profile, landmarks="training"
    )
    y = landmark_labels(cohort.clients, x.index)
    labelled = y.notna().to_numpy()
    x, target = x[labelled], y[labelled].to_numpy()
    ids, row_client = np.unique(x.index.get_level_values(c.CLIENT_ID), return_inverse=True)
    test = (np.random.default_rng(0).random(ids.size) < 0.3)[row_client]
    baseline = [
        col for col in x.columns if col.endswith("_early_mean") or col.startswith("attendance_")
    ]

    def auroc(columns: list[str]) -> float:
        model = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=200),
        )
        values = x[columns].to_numpy()
        model.fit(values[~test], target[~test])
        return float(roc_auc_score(target[test], model.predict_proba(values[test])[:, 1]))

    assert auroc(list(x.columns)) - auroc(baseline) >= 0.01


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
    ended = _ended(cohort)
    rate_ns = _dropout_share(ended[ended[c.CLIENT_ID].isin(no_show)])
    rate_cx = _dropout_share(ended[ended[c.CLIENT_ID].isin(cancel)])
    assert rate_ns >= 2 * rate_cx
    assert rate_ns - rate_cx >= 0.15


def test_age_under_25_raises_dropout_by_at_least_5_points(cohort: Cohort) -> None:
    ended = _ended(cohort)
    young = ended[c.AGE] < 25
    assert 0.10 <= young.mean() <= 0.35
    assert _dropout_share(ended[young]) >= _dropout_share(ended[~young]) + 0.05


def test_gender_has_no_effect_chi_square_p_above_001(cohort: Cohort) -> None:
    ended = _ended(cohort)
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


# --- I/O and CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_cohort_round_trips(tmp_path, fmt: str) -> None:
    cohort = simulate_cohort(200, seed=4, profile="wai_sr")
    written = write_cohort(cohort, tmp_path / "out", fmt=fmt, with_latent=True)
    assert set(written) == {"sessions", "clients", "latent", "ruptures", "simulation"}
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    sessions = read(written["sessions"])
    assert len(sessions) == len(cohort.sessions)
    assert sessions[c.CLIENT_ID].tolist() == cohort.sessions[c.CLIENT_ID].tolist()
    np.testing.assert_array_equal(
        sessions["alliance_bond"].to_numpy(), cohort.sessions["alliance_bond"].to_numpy()
    )
    if fmt == "csv":
        first_line = written["clients"].read_text().splitlines()[1]
        assert re.search(r",\d{4}-\d{2}-\d{2},", first_line)  # ISO dates, no time part
    # The files load through the contract's reader and validator without a problem.
    io = pytest.importorskip("training.io")
    loaded = io.load_cohort(written["sessions"], written["clients"], profile="wai_sr")
    assert len(loaded.sessions) == len(cohort.sessions)
    plain = write_cohort(cohort, tmp_path / "plain", fmt=fmt)
    assert set(plain) == {"sessions", "clients", "simulation"}
    assert is_simulated(plain["sessions"]) and not is_simulated(tmp_path / "elsewhere.csv")
    with pytest.raises(ValueError, match="fmt must be"):
        write_cohort(cohort, tmp_path, fmt="xlsx")  # type: ignore[arg-type]


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root so that ``simulate`` is a subcommand."""

    simulate_command.register(app)
    return app


def test_cli_profile_choices_match_the_profiles() -> None:
    assert set(get_args(simulate_command.ProfileName)) == set(PROFILES)


def test_cli_help_lists_every_option() -> None:
    result = CliRunner().invoke(_cli(), ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--clients",
        "--seed",
        "--out",
        "--profile",
        "--dropout-rate",
        "--format",
        "--with-latent",
    ):
        assert option in result.output


def test_cli_writes_files_and_prints_summary(tmp_path) -> None:
    out = tmp_path / "cohort"
    result = CliRunner().invoke(
        _cli(),
        ["simulate", "--clients", "300", "--seed", "3", "--out", str(out), "--profile", "srs"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert (out / "sessions.csv").exists() and (out / "clients.csv").exists()
    assert not (out / "latent.csv").exists()
    assert "300" in result.output and "dropout share of ended episodes" in result.output
    clients = pd.read_csv(out / "clients.csv")
    assert len(clients) == 300


def test_cli_rejects_out_of_range_dropout_rate(tmp_path) -> None:
    result = CliRunner().invoke(
        _cli(), ["simulate", "--out", str(tmp_path), "--dropout-rate", "0.95"]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "sessions.csv").exists()
