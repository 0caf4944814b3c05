"""Clinician-language drivers: the right sentence with the right numbers, for every profile."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit

import models.results
from features.arrays import SessionArrays
from features.build import landmark_rows, pack_frames
from features.kernels import compute_feature_matrix
from features.profiles import OVERALL, PROFILES, InstrumentProfile, get_profile
from features.registry import YOUNG_AGE_YEARS, Feature, FeatureRegistry, feature_registry
from models.drivers import (
    GENERAL_FOCUS,
    LOWERS,
    RAISES,
    RECENT_APPOINTMENTS,
    RECENT_RATED,
    Driver,
    DriverWriter,
    describe_drivers,
)
from models.drivers.facts import ActivityFacts, RatingFacts
from models.drivers.tables import ACTIVITY_FEATURES, RATING_STATS
from models.drivers.wording import rating, rating_text
from models.explain import Explanation
from models.scorer import Scorer
from tests.features.packing import one_client
from tests.features.reference import reference_rated_values
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
    return one_client(
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
    """The scorer's explanation of ``arrays`` at ``landmarks``, and its drivers."""
    rows = landmark_rows(arrays, landmarks, scorer.k_max)
    X = compute_feature_matrix(arrays, scorer.registry, rows)
    e = scorer.explain_matrix(X)
    writer = DriverWriter.build(scorer.registry, e.group_names)
    return e, rows, writer.describe(arrays, rows, X, e, top=top)


def _subset(cohort, n: int, profile) -> SessionArrays:
    ids = cohort.clients["client_id"].iloc[:n]
    sessions = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    clients = cohort.clients[cohort.clients["client_id"].isin(ids)]
    return pack_frames(sessions, clients, profile)


def test_drivers_follow_the_explanation(trained) -> None:
    scorer, cohort = trained["alliance6"]
    arrays = _subset(cohort, 120, scorer.profile)
    e, _, out = _score(scorer, arrays, landmarks="all")
    groups = list(e.group_names)
    rating_groups = set(scorer.registry.rating_groups)
    assert len(out) == e.n_rows
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
        _, _, out = _score(scorer, arrays)
        for d in out[0]:
            _check_driver(d)
    _, _, out = _score(scorer, _subset(cohort, 100, profile), landmarks="all")
    for drivers in out:
        for d in drivers:
            _check_driver(d)


def test_batch_gives_the_same_drivers_as_each_client_alone(trained) -> None:
    scorer, cohort = trained["alliance6"]
    ids = cohort.clients["client_id"].iloc[:30]
    sessions = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    clients = cohort.clients[cohort.clients["client_id"].isin(ids)]
    arrays = pack_frames(sessions, clients, scorer.profile)
    _, rows, out = _score(scorer, arrays)
    for i, cid in enumerate(arrays.client_id[arrays.seg_of_row[rows]]):
        s = sessions[sessions["client_id"] == cid]
        one = one_client(
            scorer.profile,
            session_number=s["session_number"].to_numpy(),
            session_date=s["session_date"].to_numpy(),
            attendance=s["attendance"].tolist(),
            ratings=np.vstack([s[c].to_numpy(float) for c in scorer.profile.columns]),
            intake_date=clients.loc[clients["client_id"] == cid, "intake_date"].iloc[0],
        )
        alone = _score(scorer, one)[2][0]
        assert [(d.group, d.text, d.evidence, d.focus, d.direction) for d in alone] == [
            (d.group, d.text, d.evidence, d.focus, d.direction) for d in out[i]
        ]
        assert [d.contribution for d in alone] == pytest.approx(
            [d.contribution for d in out[i]], abs=1e-9
        )


# -- properties on any history ------------------------------------------------------------------

#: Numbers a text quotes that are fixed by its wording, not by the client.
_FIXED = (
    "appointments 1-3",
    f"none in the last {RECENT_APPOINTMENTS}",
    f"{YOUNG_AGE_YEARS:g} years",
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def _random_explanation(registry: FeatureRegistry, n: int, seed: int) -> Explanation:
    rng = np.random.default_rng(seed)
    fc = rng.normal(0.0, 0.2, (n, len(registry.names)))
    fc[rng.random(fc.shape) < 0.3] = 0.0
    # Some rows with equal contributions (ties between groups and within them).
    tied = rng.random(n) < 0.3
    fc[tied] = rng.choice([-0.1, 0.0, 0.1], size=(int(tied.sum()), fc.shape[1]))
    return _explanation(registry, fc)


def _rows_of(e: Explanation, i: int) -> Explanation:
    """The explanation of scored row ``i`` alone."""
    one = slice(i, i + 1)
    return Explanation(
        space=e.space,
        base_logit=e.base_logit[one],
        base_probability=e.base_probability[one],
        feature_contributions=e.feature_contributions[one],
        group_contributions=e.group_contributions[one],
        feature_names=e.feature_names,
        group_names=e.group_names,
        logit=e.logit[one],
        probability=e.probability[one],
    )


def _histories(sessions: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Per client, plain lists sorted by session number (as tests/features/reference.py reads)."""
    out = {}
    for client_id, group in sessions.groupby("client_id", sort=True):
        group = group.sort_values("session_number")
        out[client_id] = {
            "session_number": group["session_number"].astype(int).tolist(),
            "attendance": group["attendance"].tolist(),
            **{
                c: group[c].astype(float).tolist()
                for c in group.columns
                if c.startswith("alliance_")
            },
        }
    return out


def _rated(history: dict[str, list], k_index: int, group: str, profile: InstrumentProfile):
    """Session number -> rated value of ``group`` up to appointment ``k_index``, on the scale the
    texts quote, from the readable reference (:func:`tests.features.reference.
    reference_rated_values`)."""
    end = k_index + 1
    values = reference_rated_values(
        history["attendance"][:end], [history[c][:end] for c in profile.columns], profile
    )
    slot = (*profile.element_names, OVERALL).index(group)
    scale = len(profile.elements) if group == OVERALL and profile.total == "sum" else 1
    return {
        sn: v * scale
        for sn, v in zip(history["session_number"][:end], values[slot], strict=True)
        if not math.isnan(v)
    }


def _check_quotes(d: Driver) -> None:
    """Every number in the text is one of its evidence (or a difference of two it quotes)."""
    ev = d.evidence
    quoted = {abs(float(v)) for v in ev.values() if isinstance(v, (int, float))}
    if ev["fact"] == "drop_alert":
        quoted.add(rating(ev["from"] - ev["to"]))
    if ev["fact"] == "own_mean":
        quoted.add(rating(ev["own_mean"] - ev["latest"]))
    text = d.text
    for fixed in _FIXED:
        text = text.replace(fixed, "")
    for number in _NUMBER.findall(text):
        assert float(number) in quoted, (d.text, ev)


def _check_history(
    d: Driver, history: dict[str, list], k_index: int, profile: InstrumentProfile
) -> None:
    """The sessions and values the evidence names are the client's, recomputed from scratch."""
    ev, fact = d.evidence, d.evidence["fact"]
    attendance = history["attendance"][: k_index + 1]
    if fact == "recent_missed":
        window = attendance[-RECENT_APPOINTMENTS:]
        assert (ev["no_shows"], ev["late_cancellations"]) == (
            window.count("no_show"),
            window.count("late_cancel"),
        )
        assert (ev["no_shows_total"], ev["late_cancellations_total"], ev["appointments_total"]) == (
            attendance.count("no_show"),
            attendance.count("late_cancel"),
            len(attendance),
        )
    if fact == "attended_share":
        assert (ev["attended"], ev["appointments"]) == (
            attendance.count("attended"),
            len(attendance),
        )
    if d.group not in (*profile.element_names, OVERALL):
        return
    series = _rated(history, k_index, d.group, profile)
    sessions = list(series)

    def at(session: int) -> float:
        return rating(series[session])

    if fact in ("trend", "change_prev", "first_to_last", "drop_alert"):
        assert ev["to_session"] == sessions[-1]
        assert (ev["from"], ev["to"]) == (at(ev["from_session"]), at(ev["to_session"]))
        apart = len(sessions) - 1 - sessions.index(ev["from_session"])
        first = len(sessions) - 1  # first_to_last: from the first rated session
        assert apart == {"trend": min(RECENT_RATED, first), "first_to_last": first}.get(fact, 1)
        if fact != "drop_alert":
            assert ev["rated_sessions"] == (len(sessions) if fact == "first_to_last" else apart)
    elif fact in ("level", "cutoff", "own_mean", "low_point"):
        assert (ev["session"], ev["latest"]) == (sessions[-1], at(sessions[-1]))
    elif fact == "ceiling":
        assert ev["session"] == sessions[-1]
    elif fact == "rupture" and "session" in ev:
        before = sessions[sessions.index(ev["session"]) - 1]
        assert (ev["from"], ev["to"], ev["latest"]) == (
            at(before),
            at(ev["session"]),
            at(sessions[-1]),
        )
    elif fact in ("n_rated", "variability", "rupture"):
        assert ev["rated_sessions"] == len(sessions)
    elif fact == "element_cutoff" and "element" in ev:
        element = _rated(history, k_index, ev["element"], profile)
        assert ev["session"] == sessions[-1]
        assert ev["latest"] == rating(element[ev["session"]])


def _check_rows(
    out: list[list[Driver]],
    arrays: SessionArrays,
    rows: np.ndarray,
    e: Explanation,
    histories: dict[str, dict[str, list]],
    top: int,
) -> set[str]:
    """Every property of every row's drivers; returns the kinds of facts seen."""
    profile = arrays.profile
    groups = list(e.group_names)
    seen = set()
    for i, drivers in enumerate(out):
        gc = e.group_contributions[i]
        expected = [g for g in np.argsort(-np.abs(gc), kind="stable")[:top] if gc[g] != 0]
        assert [groups.index(d.group) for d in drivers] == expected
        seg = int(arrays.seg_of_row[rows[i]])
        history = histories[arrays.client_id[seg]]
        k_index = int(arrays.rank[rows[i]])
        for d in drivers:
            assert d.contribution == gc[groups.index(d.group)]
            _check_driver(d)
            _check_quotes(d)
            _check_history(d, history, k_index, profile)
            seen.add(d.evidence["fact"])
    return seen


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    name=st.sampled_from(sorted(PROFILES)),
    seed=st.integers(0, 2**16),
    top=st.integers(0, 6),
)
def test_any_history_gives_drivers_that_quote_its_numbers(data, name, seed, top) -> None:
    profile = get_profile(name)
    sessions, clients = data.draw(client_history(profile))
    registry = feature_registry(profile, include_covariates=True)
    arrays = pack_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _random_explanation(registry, rows.shape[0], seed)
    writer = DriverWriter.build(registry, e.group_names)
    out = writer.describe(arrays, rows, X, e, top=top)
    _check_rows(out, arrays, rows, e, _histories(sessions), top)
    for i in range(rows.shape[0]):
        assert writer.describe(arrays, rows[i : i + 1], X[i : i + 1], _rows_of(e, i), top=top) == [
            out[i]
        ]


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("covariates", [False, True])
def test_a_cohort_gives_drivers_that_quote_its_numbers(name: str, covariates: bool) -> None:
    profile = get_profile(name)
    registry = feature_registry(profile, include_covariates=covariates)
    sessions, clients = random_cohort(60, profile, seed=5)  # never-attended, never-rated, gaps
    arrays = pack_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _random_explanation(registry, rows.shape[0], seed=1)
    writer = DriverWriter.build(registry, e.group_names)
    out = writer.describe(arrays, rows, X, e, top=4)
    seen = _check_rows(out, arrays, rows, e, _histories(sessions), 4)
    assert {"trend", "first_to_last", "level", "rupture", "recent_missed", "n_rated"} <= seen
    # A row alone, and its client alone in its own arrays, give the row's drivers.
    for i in range(0, rows.shape[0], 7):
        one = _rows_of(e, i)
        assert writer.describe(arrays, rows[i : i + 1], X[i : i + 1], one, top=4) == [out[i]]
        seg = arrays.seg_of_row[rows[i]]
        alone = arrays.take_segments(np.array([seg]))
        row = arrays.rank[rows[i : i + 1]]
        assert writer.describe(alone, row, X[i : i + 1], one, top=4) == [out[i]]


# -- the writer ----------------------------------------------------------------------------------


def test_one_writer_describes_any_batch_of_its_model() -> None:
    registry = feature_registry(SRS, include_covariates=True)
    sessions, clients = random_cohort(20, SRS, seed=3)
    arrays = pack_frames(sessions, clients, SRS)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _random_explanation(registry, rows.shape[0], seed=2)
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
    arrays = _client(attendance=["attended", "attended"])
    rows = landmark_rows(arrays, "latest")
    X = compute_feature_matrix(arrays, registry, rows)
    e = _explanation(registry, np.zeros((1, X.shape[1])))
    writer = DriverWriter.build(registry, tuple(reversed(e.group_names)))
    with pytest.raises(ValueError, match="groups differ from the driver writer's"):
        writer.describe(arrays, rows, X, e)


@pytest.mark.parametrize("n", [1, 30])
@pytest.mark.parametrize("bad", [-1, 3])
def test_rows_outside_the_arrays_are_refused(n: int, bad: int) -> None:
    arrays = _client(attendance=["attended"] * 3)
    registry = feature_registry(ALLIANCE6)
    rows = np.full(n, 2, dtype=np.int64)
    X = compute_feature_matrix(arrays, registry, rows)
    e = _explanation(registry, np.full((n, X.shape[1]), 0.1))
    assert len(describe_drivers(arrays, rows, registry, X, e)) == n
    rows[-1] = bad
    with pytest.raises(ValueError, match="inside the session arrays"):
        describe_drivers(arrays, rows, registry, X, e)


@given(x=st.floats())
def test_rating_text_is_the_value_rounded_to_one_decimal(x: float) -> None:
    # rating_text formats directly ("z" drops the sign of a rounded zero); it must read as the
    # evidence's rating() does, so that a text and its evidence quote the same number.
    assert rating_text(x) == f"{rating(x):.1f}"


def test_facts_end_with_the_feature_statistics_they_read() -> None:
    # The fact engine fills the trailing fields from the feature row, in these orders.
    assert RatingFacts._fields[-len(RATING_STATS) :] == RATING_STATS
    assert ActivityFacts._fields[-len(ACTIVITY_FEATURES) :] == ACTIVITY_FEATURES
