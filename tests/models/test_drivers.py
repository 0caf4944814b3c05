"""Clinician-language drivers: the right sentence with the right numbers, for every profile."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import typing
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit

import models.drivers as drivers_module
from features.arrays import SessionArrays
from features.build import landmark_rows
from features.kernels import compute_feature_matrix
from features.profiles import PROFILES, get_profile
from features.registry import Feature, FeatureRegistry, feature_registry
from models.drivers import GENERAL_FOCUS, LOWERS, RAISES, Driver, describe_drivers
from models.explain import Explanation
from models.scorer import Scorer
from tests.features.strategies import client_history, random_cohort
from training.pipeline import TrainConfig, train_model
from training.simulate import simulate_cohort

ALLIANCE6 = get_profile("alliance6")
SRS = get_profile("srs")
WEEK = np.timedelta64(7, "D")
START = np.datetime64("2024-01-08", "D")


# -- helpers -----------------------------------------------------------------------------------


def _client(
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
    return SessionArrays.single_client(
        profile,
        session_number=np.arange(1, n + 1),
        session_date=START + WEEK * np.arange(n),
        attendance=list(attendance),
        ratings=full,
        intake_date=START - WEEK,
        age=age,
    )


def _explanation(registry: FeatureRegistry, fc: np.ndarray) -> Explanation:
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


def _describe(
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
    out = describe_drivers(arrays, rows, registry, X, _explanation(registry, fc), top=top)
    return out[0], X[0]


def _x(registry: FeatureRegistry, X: np.ndarray, name: str) -> float:
    return float(X[registry.names.index(name)])


def _check_driver(d: Driver) -> None:
    """Invariants of every driver: a real sentence, JSON-safe evidence, no nan anywhere."""
    assert d.text and not d.text[0].islower(), d.text
    assert "nan" not in d.text.lower() and "inf" not in d.text.lower(), d.text
    assert d.direction == (RAISES if d.contribution > 0 else LOWERS)
    json.dumps(d.evidence, allow_nan=False)
    assert isinstance(d.evidence["fact"], str)


def _nan_equal(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_nan_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


# -- sentences for given groups (independent of any model's ranking) ---------------------------


def test_falling_goals_quotes_the_ratings_three_rated_sessions_apart() -> None:
    arrays = _client(ratings={"goals": [8.6, 8.4, 7.0, 6.1]})
    drivers, _ = _describe(arrays, {"goals_slope": 0.5})
    assert len(drivers) == 1  # every other group contributes exactly 0
    d = drivers[0]
    assert (
        d.text == "Clear goals and expectations fell from 8.6 to 6.1 over the last 3 rated sessions"
    )
    assert (d.group, d.label, d.direction) == ("goals", "Clear goals and expectations", RAISES)
    assert d.evidence == {
        "fact": "trend",
        "from": 8.6,
        "to": 6.1,
        "from_session": 1,
        "to_session": 4,
        "rated_sessions": 3,
    }
    assert d.focus == ALLIANCE6.element("goals").focus


def test_trend_counts_rated_sessions_only() -> None:
    # Session 3 was attended without a goals rating and session 4 missed (its rating ignored).
    arrays = _client(
        ratings={"goals": [9.0, 8.6, None, 5.0, 8.4, 6.1]},
        attendance=["attended", "attended", "attended", "no_show", "attended", "attended"],
    )
    d = _describe(arrays, {"goals_change_prev": 0.4})[0][0]
    assert (
        d.text
        == "Clear goals and expectations fell from 8.4 to 6.1 since the previous rated session"
    )
    d = _describe(arrays, {"goals_slope": 0.4})[0][0]
    assert (
        d.text == "Clear goals and expectations fell from 9.0 to 6.1 over the last 3 rated sessions"
    )
    assert (d.evidence["from_session"], d.evidence["to_session"]) == (1, 6)


def test_a_rise_is_not_quoted_as_a_reason_for_risk() -> None:
    arrays = _client(ratings={"goals": [6.0, 7.0, 8.0, 8.5]})
    raises = _describe(arrays, {"goals_slope": 0.3})[0][0]
    assert "rose" not in raises.text and "fell" not in raises.text
    lowers = _describe(arrays, {"goals_slope": -0.3})[0][0]
    assert (
        lowers.text
        == "Clear goals and expectations rose from 6.0 to 8.5 over the last 3 rated sessions"
    )


@pytest.mark.parametrize(
    ("attendance", "feature", "text"),
    [
        (
            ["attended", "attended", "no_show", "attended", "no_show"],
            "attendance_no_show_count",
            "2 no-shows in the last 3 appointments",
        ),
        (
            ["attended", "attended", "attended", "no_show", "late_cancel", "attended"],
            "attendance_no_show_rate",
            "1 no-show and 1 late cancellation in the last 3 appointments",
        ),
        (["attended", "no_show"], "attendance_no_show_count", "1 no-show in 2 appointments so far"),
        (
            ["no_show", "attended", "attended", "attended", "attended"],
            "attendance_no_show_count",
            "1 no-show in 5 appointments so far, none in the last 3",
        ),
        (
            ["attended", "no_show", "late_cancel"],
            "attendance_missed_streak",
            "Missed the last 2 appointments in a row (no-shows or late cancellations)",
        ),
        (
            ["attended", "attended", "late_cancel"],
            "attendance_last_late_cancel",
            "Missed the latest appointment (session 3, late cancellation)",
        ),
        (
            ["attended", "no_show", "attended", "attended"],
            "attendance_no_show_first3",
            "1 no-show among appointments 1-3",
        ),
        (
            ["attended", "cancelled", "rescheduled", "cancelled"],
            "attendance_cancelled_count",
            "2 cancelled appointments and 1 rescheduled appointment so far",
        ),
        (
            ["attended", "no_show", "attended", "attended"],
            "attendance_attended_rate",
            "Attended 3 of 4 appointments (75%)",
        ),
    ],
)
def test_attendance_sentences(attendance: list[str], feature: str, text: str) -> None:
    drivers, _ = _describe(_client(attendance=attendance), {feature: 0.4})
    (d,) = drivers
    assert d.text == text
    assert (d.group, d.label, d.focus) == ("attendance", "Attendance", None)
    _check_driver(d)


def test_good_attendance_is_worded_protectively() -> None:
    d = _describe(_client(attendance=["attended"] * 4), {"attendance_no_show_count": -0.3})[0][0]
    assert d.text == "No no-shows or late cancellations in 4 appointments so far"
    assert d.direction == LOWERS
    arrays = _client(attendance=["no_show", "attended", "attended", "attended"])
    d = _describe(arrays, {"attendance_no_show_rate": -0.3})[0][0]
    assert (
        d.text == "No no-shows or late cancellations in the last 3 appointments (1 no-show earlier)"
    )


def test_unrepaired_rupture_names_the_element_and_session() -> None:
    arrays = _client(ratings={"trust": [9.0, 9.0, 9.0, 9.0, 6.0, 6.5]})
    registry = feature_registry(ALLIANCE6)
    drivers, X = _describe(arrays, {"trust_unrepaired": 0.6})
    assert _x(registry, X, "trust_unrepaired") == 1.0  # the kernel agrees it is open
    d = drivers[0]
    assert d.text == (
        "Trust and rapport rupture at session 5 not yet repaired (dropped from 9.0 to 6.0, latest 6.5)"
    )
    assert "session 5" in d.text and "not yet repaired" in d.text and "Trust and rapport" in d.text
    assert d.evidence["session"] == 5 and d.evidence["repaired"] == 0
    assert d.focus == ALLIANCE6.element("trust").focus


def test_repaired_rupture_is_protective() -> None:
    arrays = _client(ratings={"trust": [9.0, 9.0, 9.0, 9.0, 6.0, 9.2]})
    registry = feature_registry(ALLIANCE6)
    drivers, X = _describe(arrays, {"trust_has_rupture": -0.2})
    assert _x(registry, X, "trust_unrepaired") == 0.0
    assert drivers[0].text == (
        "Trust and rapport rupture at session 5 was repaired (dropped from 9.0 to 6.0, latest 9.2)"
    )


def test_variability_wording_follows_the_numbers() -> None:
    arrays = _client(ratings={"trust": [9.0, 5.0, 9.0, 5.0]})
    d = _describe(arrays, {"trust_sd": 0.3})[0][0]
    assert d.text == "Trust and rapport ratings unstable (SD 2.3 points over 4 rated sessions)"
    # A large SD is never called stable: the sentence falls back to the latest rating.
    d = _describe(arrays, {"trust_sd": -0.3})[0][0]
    assert "stable" not in d.text
    steady = _client(ratings={"trust": [9.0, 9.2, 9.0, 9.1]})
    d = _describe(steady, {"trust_mssd": -0.3})[0][0]
    assert d.text == "Trust and rapport ratings stable (SD 0.1 points over 4 rated sessions)"


def test_high_steady_rating_is_worded_protectively() -> None:
    arrays = _client(ratings={"trust": [8.0, 9.2, 9.1, 9.0]})
    d = _describe(arrays, {"trust_last3_mean": -0.3})[0][0]
    assert d.text == "Trust and rapport rated high and steady (9.1 over the last 3 rated sessions)"
    assert d.direction == LOWERS


@pytest.mark.parametrize(
    ("ratings", "feature", "text"),
    [
        (
            {"empathy": [9.0, 6.0]},
            "alliance_overall_any_element_below_cutoff",
            "Empathy rated 6.0 at session 2, below the element cut-off 8",
        ),
        (
            {e: [10.0] * 3 for e in ALLIANCE6.element_names},
            "alliance_overall_ceiling_streak",
            "Perfect scores (10 on every element) in the last 3 rated sessions, a known warning sign",
        ),
        (
            {e: [9.0, 7.5] for e in ALLIANCE6.element_names},
            "alliance_overall_drop_alert",
            "Overall alliance fell by 1.5 points since the previous rated session (from 9.0 to 7.5)",
        ),
        (
            {e: [8.0, 8.5] for e in ALLIANCE6.element_names},
            "alliance_overall_below_cutoff",
            "Overall alliance rated 8.5 at session 2, below the cut-off 9",
        ),
    ],
)
def test_overall_alliance_rules(ratings, feature: str, text: str) -> None:
    d = _describe(_client(ratings=ratings), {feature: 0.4})[0][0]
    assert d.text == text
    assert (d.group, d.label) == ("alliance_overall", "Overall alliance")


def test_overall_focus_is_the_strategy_of_the_lowest_element() -> None:
    arrays = _client(ratings={"collaboration": [9.0, 6.5], "trust": [9.0, 7.0]})
    d = _describe(arrays, {"alliance_overall_last": 0.4})[0][0]
    assert d.focus == ALLIANCE6.element("collaboration").focus
    never = _client(attendance=["attended"] * 3, default=None)
    d = _describe(never, {"alliance_overall_last": 0.4})[0][0]
    assert d.text == "Overall alliance not rated yet"
    assert d.focus == GENERAL_FOCUS


def test_srs_overall_is_quoted_as_the_total() -> None:
    arrays = _client(SRS, ratings={"relationship": [9.0, 7.0]}, default=8.0)
    d = _describe(arrays, {"alliance_overall_below_cutoff": 0.5})[0][0]
    # Latest items 7, 8, 8, 8: total 31 of 40, under the SRS cut-off 36.
    assert d.text == "Overall alliance total was 31.0 at session 2, below the cut-off 36"
    assert d.focus == SRS.element("relationship").focus


@pytest.mark.parametrize(
    ("attendance", "ratings", "feature", "text"),
    [
        (
            ["attended"] * 3,
            None,
            "engagement_never_rated",
            "No alliance rating recorded yet (3 attended sessions)",
        ),
        (
            ["attended"] * 4,
            {"x": [9.0, None, 9.0, None]},
            "engagement_unrated_share",
            "2 of 4 attended sessions without an alliance rating",
        ),
        (
            ["attended", "no_show", "no_show"],
            None,
            "engagement_days_since_attended",
            "14 days since the last attended session",
        ),
        (
            ["no_show", "no_show"],
            None,
            "engagement_never_attended",
            "No appointment attended yet (2 appointments scheduled)",
        ),
        (["attended", "attended"], None, "engagement_landmark", "Early in therapy: appointment 2"),
        (
            ["attended"] * 3,
            None,
            "engagement_days_since_intake",
            "21 days since intake (3 appointments)",
        ),
    ],
)
def test_engagement_sentences(attendance, ratings, feature: str, text: str) -> None:
    if ratings is None:
        arrays = _client(attendance=attendance, default=None)
    else:
        values = ratings["x"]
        arrays = _client(
            attendance=attendance, ratings={e: values for e in ALLIANCE6.element_names}
        )
    d = _describe(arrays, {feature: 0.3})[0][0]
    assert d.text == text
    assert (d.group, d.focus) == ("engagement", None)


def test_client_covariates_and_the_generic_fallback() -> None:
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    d = _describe(
        _client(attendance=["attended"], age=22.0), {"client_age": 0.2}, registry=registry
    )[0][0]
    assert (d.text, d.label, d.focus) == (
        "Client younger than 25 years",
        "Client characteristics",
        None,
    )
    assert d.evidence["age_years"] == 22
    d = _describe(
        _client(attendance=["attended"]), {"client_age_under_25": 0.2}, registry=registry
    )[0][0]
    assert d.text == "Client age not recorded"

    # A group this module has no sentences for still gets one, from its contribution.
    base = feature_registry(ALLIANCE6)
    extra = Feature(
        "therapist_caseload", "therapist", "Clients on the caseload.", "clients", "context"
    )
    registry = FeatureRegistry(profile=ALLIANCE6, features=(*base.features, extra))
    arrays = _client(attendance=["attended"])
    rows = landmark_rows(arrays, "latest")
    X = np.column_stack([compute_feature_matrix(arrays, base, rows), [31.0]])
    fc = np.zeros((1, len(registry.names)))
    fc[0, -1] = 0.31
    (d,) = describe_drivers(arrays, rows, registry, X, _explanation(registry, fc))[0]
    assert d.text == "Therapist contributes +0.31 to the risk (log-odds)"
    assert d.evidence == {"fact": "contribution", "contribution": 0.31}


def test_ranking_top_and_zero_contributions() -> None:
    arrays = _client(
        ratings={"goals": [8.6, 8.4, 7.0, 6.1]}, attendance=["attended"] * 3 + ["attended"]
    )
    contributions = {
        "goals_slope": 0.2,
        "trust_last": -0.5,
        "attendance_attended_rate": 0.35,
        "engagement_landmark": 0.1,
    }
    drivers, _ = _describe(arrays, contributions, top=3)
    assert [d.group for d in drivers] == ["trust", "attendance", "goals"]
    assert [d.contribution for d in drivers] == [-0.5, 0.35, 0.2]
    assert [d.direction for d in drivers] == [LOWERS, RAISES, RAISES]
    assert [d.group for d in _describe(arrays, contributions, top=1)[0]] == ["trust"]
    assert len(_describe(arrays, contributions, top=10)[0]) == 4
    assert _describe(arrays, contributions, top=0)[0] == []


def test_errors_name_the_problem() -> None:
    arrays = _client(attendance=["attended", "attended"])
    registry = feature_registry(ALLIANCE6)
    rows = landmark_rows(arrays, "latest")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _explanation(registry, np.zeros((1, X.shape[1])))
    with pytest.raises(ValueError, match="top must be >= 0"):
        describe_drivers(arrays, rows, registry, X, e, top=-1)
    with pytest.raises(ValueError, match="same rows"):
        describe_drivers(arrays, np.array([0, 1]), registry, X, e)
    with pytest.raises(ValueError, match="inside the session arrays"):
        describe_drivers(arrays, np.array([5]), registry, X, e)
    other = feature_registry(ALLIANCE6, include_covariates=True)
    e_other = _explanation(other, np.zeros((1, len(other.names))))
    with pytest.raises(ValueError, match="differ from the registry"):
        describe_drivers(arrays, rows, registry, X, e_other)
    srs = feature_registry(SRS)
    with pytest.raises(ValueError, match="different instrument profiles"):
        describe_drivers(
            arrays,
            rows,
            srs,
            np.zeros((1, len(srs.names))),
            _explanation(srs, np.zeros((1, len(srs.names)))),
        )


# -- with real models -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[Scorer, object]]:
    """A tiny real model per profile, with its simulated cohort."""
    out = {}
    for name in PROFILES:
        cohort = simulate_cohort(600, seed=11, profile=name)
        result = train_model(
            cohort.sessions, cohort.clients, get_profile(name), TrainConfig(n_trials=1, n_boot=0)
        )
        out[name] = (result.scorer, cohort)
    return out


def _score(scorer: Scorer, arrays: SessionArrays, landmarks="latest", top: int = 3):
    rows = landmark_rows(arrays, landmarks, scorer.k_max)
    batch = scorer.score_arrays(arrays, landmarks=landmarks)
    return batch, describe_drivers(
        arrays, rows, scorer.registry, batch.features, batch.explanation, top=top
    )


def _subset(cohort, n: int, profile) -> SessionArrays:
    ids = cohort.clients["client_id"].iloc[:n]
    sessions = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    clients = cohort.clients[cohort.clients["client_id"].isin(ids)]
    return SessionArrays.from_frames(sessions, clients, profile)


def test_drivers_follow_the_explanation(trained) -> None:
    scorer, cohort = trained["alliance6"]
    arrays = _subset(cohort, 120, scorer.profile)
    batch, out = _score(scorer, arrays, landmarks="all")
    e = batch.explanation
    groups = list(e.group_names)
    rating_groups = set(scorer.registry.rating_groups)
    assert len(out) == batch.n_rows
    seen = set()
    for i, drivers in enumerate(out):
        assert 1 <= len(drivers) <= 3
        sizes = [abs(d.contribution) for d in drivers]
        assert sizes == sorted(sizes, reverse=True)
        top = np.sort(np.abs(e.group_contributions[i]))[::-1][: len(drivers)]
        np.testing.assert_allclose(sizes, top)
        for d in drivers:
            assert d.contribution == e.group_contributions[i, groups.index(d.group)]
            assert (d.focus is not None) == (d.group in rating_groups)
            _check_driver(d)
            seen.add(d.evidence["fact"])
    assert len(seen) >= 5  # the sentences vary with the history, not one template


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_and_awkward_histories(trained, name: str) -> None:
    scorer, cohort = trained[name]
    profile = scorer.profile
    mid = 0.5 * (profile.scale_min + profile.scale_max)
    clients = [
        _client(profile, attendance=["attended"], default=profile.scale_max),
        _client(profile, attendance=["no_show"], default=None),
        _client(profile, attendance=["attended", "no_show", "attended"], default=None),
        _client(profile, ratings={profile.element_names[0]: [profile.scale_max, mid, None]}),
    ]
    for arrays in clients:
        _, out = _score(scorer, arrays)
        for d in out[0]:
            _check_driver(d)
    _, out = _score(scorer, _subset(cohort, 100, profile), landmarks="all")
    for drivers in out:
        for d in drivers:
            _check_driver(d)


def test_batch_gives_the_same_drivers_as_each_client_alone(trained) -> None:
    scorer, cohort = trained["alliance6"]
    ids = cohort.clients["client_id"].iloc[:30]
    sessions = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    clients = cohort.clients[cohort.clients["client_id"].isin(ids)]
    arrays = SessionArrays.from_frames(sessions, clients, scorer.profile)
    batch, out = _score(scorer, arrays)
    for i, cid in enumerate(batch.client_id):
        s = sessions[sessions["client_id"] == cid]
        one = SessionArrays.single_client(
            scorer.profile,
            session_number=s["session_number"].to_numpy(),
            session_date=s["session_date"].to_numpy(),
            attendance=s["attendance"].tolist(),
            ratings=np.vstack([s[c].to_numpy(float) for c in scorer.profile.columns]),
            intake_date=clients.loc[clients["client_id"] == cid, "intake_date"].iloc[0],
        )
        alone = _score(scorer, one)[1][0]
        assert [(d.group, d.text, d.evidence, d.focus, d.direction) for d in alone] == [
            (d.group, d.text, d.evidence, d.focus, d.direction) for d in out[i]
        ]
        assert [d.contribution for d in alone] == pytest.approx(
            [d.contribution for d in out[i]], abs=1e-9
        )


# -- the two implementations agree ---------------------------------------------------------------


def _random_explanation(registry: FeatureRegistry, n: int, seed: int) -> Explanation:
    rng = np.random.default_rng(seed)
    fc = rng.normal(0.0, 0.2, (n, len(registry.names)))
    fc[rng.random(fc.shape) < 0.3] = 0.0
    return _explanation(registry, fc)


@pytest.mark.parametrize("name", list(PROFILES))
def test_small_and_batch_paths_give_identical_facts(name: str) -> None:
    profile = get_profile(name)
    registry = feature_registry(profile, include_covariates=True)
    sessions, clients = random_cohort(60, profile, seed=5)
    arrays = SessionArrays.from_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _random_explanation(registry, rows.shape[0], seed=1)
    t = drivers_module._tables(registry, e.group_names)
    args = (arrays, rows, X, e.group_contributions, e.feature_contributions, 4, t)
    small = drivers_module._pairs_small(*args)
    batch = drivers_module._pairs_batch(*args)
    assert _nan_equal(small, batch)
    facts = {f.m for f in batch[4] if isinstance(f, drivers_module._RatingFacts)}
    assert {0, 1, 2, 3} <= facts  # never rated, single and several rated sessions were covered
    # And the public function agrees row by row (one row at a time takes the small path).
    out = describe_drivers(arrays, rows, registry, X, e)
    for i in range(0, rows.shape[0], 7):
        one = Explanation(
            space=e.space,
            base_logit=e.base_logit[i : i + 1],
            base_probability=e.base_probability[i : i + 1],
            feature_contributions=e.feature_contributions[i : i + 1],
            group_contributions=e.group_contributions[i : i + 1],
            feature_names=e.feature_names,
            group_names=e.group_names,
            logit=e.logit[i : i + 1],
            probability=e.probability[i : i + 1],
        )
        assert describe_drivers(arrays, rows[i : i + 1], registry, X[i : i + 1], one) == [out[i]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(PROFILES)), seed=st.integers(0, 2**16))
def test_any_history_gives_valid_drivers(data, name: str, seed: int) -> None:
    profile = get_profile(name)
    sessions, clients = data.draw(client_history(profile))
    registry = feature_registry(profile, include_covariates=True)
    arrays = SessionArrays.from_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _random_explanation(registry, rows.shape[0], seed)
    out = describe_drivers(arrays, rows, registry, X, e, top=4)
    groups = list(e.group_names)
    for i, drivers in enumerate(out):
        assert len(drivers) <= 4
        for d in drivers:
            _check_driver(d)
            assert d.contribution == e.group_contributions[i, groups.index(d.group)]
    t = drivers_module._tables(registry, e.group_names)
    args = (arrays, rows, X, e.group_contributions, e.feature_contributions, 4, t)
    assert _nan_equal(drivers_module._pairs_small(*args), drivers_module._pairs_batch(*args))


# -- internals the fast paths rely on -----------------------------------------------------------


@given(x=st.floats())
def test_rating_text_is_the_value_rounded_to_one_decimal(x: float) -> None:
    # _r1 formats directly ("z" drops the sign of a rounded zero); it must read as round() does.
    assert drivers_module._r1(x) == f"{round(x, 1) + 0.0:.1f}"


def test_facts_tuples_list_the_integers_first_then_the_feature_statistics() -> None:
    for cls, stats in (
        (drivers_module._RatingFacts, drivers_module._RATING_STATS),
        (drivers_module._ActivityFacts, drivers_module._ACTIVITY_FEATURES),
    ):
        assert cls._fields[-len(stats) :] == stats
        kinds = list(typing.get_type_hints(cls).values())
        n_int = drivers_module._INT_FIELDS[cls]
        assert kinds == [int] * n_int + [float] * (len(kinds) - n_int)


@pytest.mark.parametrize("n", [2, drivers_module._SMALL_PAIRS + 1])
@pytest.mark.parametrize("bad", [-1, 3])
def test_rows_outside_the_arrays_are_refused_for_few_and_many_rows(n: int, bad: int) -> None:
    arrays = _client(attendance=["attended"] * 3)
    registry = feature_registry(ALLIANCE6)
    rows = np.full(n, 2, dtype=np.int64)
    X = compute_feature_matrix(arrays, registry, rows)
    e = _explanation(registry, np.full((n, X.shape[1]), 0.1))
    assert len(describe_drivers(arrays, rows, registry, X, e)) == n
    rows[-1] = bad
    with pytest.raises(ValueError, match="inside the session arrays"):
        describe_drivers(arrays, rows, registry, X, e)


@given(x=st.floats(allow_nan=True, allow_infinity=True))
def test_cached_rounding_reads_as_round_does(x: float) -> None:
    # The caches key on the value: 0.0 and -0.0 (equal keys) must give the same results.
    for y in (x, -x, 0.0, -0.0):
        rounded = round(y, 1) + 0.0
        assert repr(drivers_module._v(y)) == repr(rounded)
        assert repr(drivers_module._rated(y)) == repr((rounded, f"{rounded:.1f}"))
        assert drivers_module._int(y) == (int(round(y)) if math.isfinite(y) else 0)


def test_chain_codes_name_the_group_and_its_candidates_in_order() -> None:
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    t = drivers_module._tables(registry, tuple(registry.index_of_group))
    rng = np.random.default_rng(3)
    for gi, g in enumerate(t.groups):
        for n in range(drivers_module._CANDIDATES + 1):
            candidates = rng.permutation(len(g.col_list))[:n].tolist()
            topics = [topic for j in candidates for topic in g.topics[j]]
            expected = tuple(
                drivers_module._BUILDERS[topic]
                for topic in dict.fromkeys(topics + [*drivers_module._DEFAULT_TOPICS[g.kind]])
            )
            code = drivers_module._chain_code(t, gi, candidates)
            assert drivers_module._chain(t, code) == expected
            t.chains.pop(code)  # and decoded again, not read from the cache
            assert drivers_module._chain(t, code) == expected


def test_tied_contributions_pick_the_same_candidates_on_both_paths() -> None:
    # Ties are common in practice (equal contributions of a group's features): both paths take
    # them in column order.
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    sessions, clients = random_cohort(30, ALLIANCE6, seed=2)
    arrays = SessionArrays.from_frames(sessions, clients, ALLIANCE6)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    rng = np.random.default_rng(4)
    fc = rng.choice([-0.1, 0.0, 0.1], size=(rows.shape[0], len(registry.names)))
    e = _explanation(registry, fc)
    t = drivers_module._tables(registry, e.group_names)
    args = (arrays, rows, X, e.group_contributions, e.feature_contributions, 3, t)
    small, batch = drivers_module._pairs_small(*args), drivers_module._pairs_batch(*args)
    assert _nan_equal(small, batch)
    assert len(set(batch[3])) > 10  # many distinct chains were compared


def test_groups_too_wide_for_chain_codes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = feature_registry(ALLIANCE6)
    monkeypatch.setattr(drivers_module, "_TABLES", {})
    monkeypatch.setattr(drivers_module, "_CANDIDATES", 40)  # codes beyond int64
    with pytest.raises(ValueError, match="too many features"):
        drivers_module._tables(registry, tuple(registry.index_of_group))


def test_drivers_are_ordinary_frozen_driver_objects() -> None:
    # describe_drivers builds its Driver objects without Driver.__init__ (for speed): they must
    # be indistinguishable from ones built with it.
    drivers, _ = _describe(
        _client(ratings={"goals": [8, 8, 6, 4]}, attendance=["attended"] * 4),
        {"goals_slope": 0.5, "attendance_attended_rate": -0.2, "alliance_overall_last": 0.3},
    )
    assert len(drivers) == 3
    names = [f.name for f in dataclasses.fields(Driver)]
    for d in drivers:
        same = Driver(**{name: getattr(d, name) for name in names})
        assert d == same and repr(d) == repr(same)
        assert list(vars(d)) == names
        assert pickle.loads(pickle.dumps(d)) == d
        assert dataclasses.replace(d, text="x").text == "x"
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.text = "x"  # type: ignore[misc]
