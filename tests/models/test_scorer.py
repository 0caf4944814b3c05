"""The scorer: one inference entry from episodes, exact explanations, safe persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xgboost as xgb
from pydantic import TypeAdapter

from features.build import build_features
from features.episodes import Episodes
from features.profiles import get_profile
from features.registry import feature_registry
from features.validation import (
    DUPLICATE_SESSION_NUMBER,
    NO_SESSIONS,
    normalise_clients,
    normalise_sessions,
    rating_out_of_range,
)
from models.booster import fit_booster, margin
from models.calibration import MarginCalibrator
from models.results import ContractProblem, RiskScore
from models.scorer import (
    BOOSTER_FILE,
    SCORER_FILE,
    HighBandRule,
    IncompatibleModelError,
    RiskBands,
    Scorer,
    SelfCheckError,
)
from training.simulate import simulate_cohort


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(400, seed=3)


@pytest.fixture(scope="module")
def scorer(cohort) -> Scorer:
    profile = get_profile("alliance6")
    registry = feature_registry(profile)
    frame = build_features(cohort.sessions, cohort.clients, profile=profile, landmarks="training")
    outcome = cohort.clients.set_index("client_id")["outcome"]
    y_all = (outcome.reindex(frame.index.get_level_values(0)) == "dropout").to_numpy(float)
    labelled = (outcome.reindex(frame.index.get_level_values(0)) != "ongoing").to_numpy()
    X, y = frame.to_numpy()[labelled], y_all[labelled]
    half = X.shape[0] // 2
    fit = fit_booster(
        X[:half], y[:half], X[half:], y[half:], feature_names=registry.names, n_trials=1, seed=0
    )
    cal = MarginCalibrator(method="sigmoid").fit(margin(fit.booster, X[half:]), y[half:])
    return Scorer(
        booster=fit.booster,
        calibrator=cal.to_dict(),
        registry=registry,
        bands=RiskBands(0.2, 0.5),
        metadata={"note": "test"},
        model_card="# card\n",
    )


@pytest.fixture(scope="module")
def episodes(cohort) -> Episodes:
    return _episodes(cohort)


def _episodes(cohort, ids=None) -> Episodes:
    s, c = cohort.sessions, cohort.clients
    if ids is not None:
        s, c = s[s["client_id"].isin(ids)], c.set_index("client_id").loc[ids].reset_index()
    return Episodes.from_frames(
        normalise_sessions(s, cohort.profile), normalise_clients(c), cohort.profile
    )


def test_score_equals_the_feature_library_and_the_matrix_path(scorer, cohort, episodes) -> None:
    scored = scorer.score(episodes, landmarks="all")
    frame = build_features(cohort.sessions, cohort.clients, profile=scorer.profile)
    # Episodes keep the clients table's order; the feature frame is sorted by client id.
    expected = frame.loc[list(zip(episodes.client_id[scored.episode], scored.landmark,
                                  strict=True))].to_numpy()  # fmt: skip
    np.testing.assert_array_equal(scored.features, expected)
    np.testing.assert_allclose(
        scored.probability, scorer.explain_matrix(expected).probability, rtol=0, atol=0
    )
    np.testing.assert_allclose(
        scored.probability, scorer.predict_proba(expected), rtol=0, atol=1e-12
    )


def test_one_episode_alone_equals_its_row_among_all(scorer, cohort, episodes) -> None:
    together = {r.client_id: r for r in scorer.score(episodes).results}
    for cid in cohort.clients["client_id"].iloc[[0, 7, 123, 399]]:
        (alone,) = scorer.score(_episodes(cohort, [cid])).results
        row = together[cid]
        assert alone.probability == row.probability
        assert alone.landmark == row.landmark
        assert alone.explanation.drivers == row.explanation.drivers
        assert alone.explanation.contributions == row.explanation.contributions


def test_episode_order_does_not_change_any_result(scorer, cohort) -> None:
    ids = list(cohort.clients["client_id"].iloc[:60])
    rng = np.random.default_rng(0)
    shuffled = [ids[i] for i in rng.permutation(len(ids))]
    a = {r.client_id: r for r in scorer.score(_episodes(cohort, ids)).results}
    b = {r.client_id: r for r in scorer.score(_episodes(cohort, shuffled)).results}
    assert a.keys() == b.keys()
    for cid in ids:
        assert a[cid].probability == b[cid].probability
        assert a[cid].explanation.drivers == b[cid].explanation.drivers


def test_results_add_up_exactly_and_say_why(scorer, episodes) -> None:
    scored = scorer.score(episodes)
    assert scored.n_rows == episodes.n_episodes and not scored.problems
    for r in scored.results:
        e = r.explanation
        total = e.base_value + sum(c.contribution for c in e.contributions)
        assert math.isclose(total, e.output_value, abs_tol=1e-9)
        assert math.isclose(1 / (1 + math.exp(-e.output_value)), r.probability, abs_tol=1e-12)
        assert 0.0 <= r.probability <= 1.0
        assert r.risk_band == scorer.bands.assign(np.array([r.probability]))[0]
        assert [c.group for c in e.contributions] == list(scorer.names.groups)
        magnitudes = [abs(d.contribution) for d in e.drivers]
        assert 1 <= len(e.drivers) <= 3 and magnitudes == sorted(magnitudes, reverse=True)
        by_group = {c.group: c.contribution for c in e.contributions}
        for d in e.drivers:
            assert d.contribution == by_group[d.group] and d.text and "nan" not in d.text
            assert d.direction == ("raises risk" if d.contribution > 0 else "lowers risk")
        assert len(e.features) == 10
        feature_magnitudes = [abs(f.contribution) for f in e.features]
        assert feature_magnitudes == sorted(feature_magnitudes, reverse=True)
        assert all(f.value is None or math.isfinite(f.value) for f in e.features)
        assert r.clinic_id and r.therapist_id


def test_to_dict_is_the_one_serialisation_and_round_trips(scorer, episodes) -> None:
    result = scorer.score(episodes).results[0]
    doc = result.to_dict()
    json.dumps(doc)  # JSON-ready: no numpy scalars, no datetimes
    assert doc["scored_at"].endswith("Z")
    assert TypeAdapter(RiskScore).validate_python(doc) == result


def test_broken_episodes_are_reported_and_the_others_scored(scorer, cohort) -> None:
    ids = list(cohort.clients["client_id"].iloc[:4])
    e = _episodes(cohort, ids)
    first = [int(np.flatnonzero(e.episode == j)[0]) for j in range(4)]
    sn, att, ratings = e.session_number.copy(), e.attendance.copy(), e.ratings.copy()
    second = first[1] + 1
    sn[second] = sn[first[1]]  # episode 1: a repeated session number
    rated = int(np.flatnonzero((e.episode == 2) & ~np.isnan(e.ratings[3]))[0])
    ratings[3, rated] = 11.0  # episode 2: goals out of the 0-10 scale
    broken = Episodes.from_columns(
        e.profile,
        client_id=[*e.client_id, "no-appointments"],
        clinic_id=[*e.clinic_id, "k"],
        therapist_id=[*e.therapist_id, "t"],
        intake_day=[*e.intake_day, np.nan],
        age=[*e.age, np.nan],
        episode=e.episode,
        session_number=sn,
        day=e.day,
        attendance=att,
        ratings=ratings,
    )
    scored = scorer.score(broken)
    assert sorted(scored.problems) == [1, 2, 4]
    assert scored.problems[1] == (
        ContractProblem(first[1], "session_number", DUPLICATE_SESSION_NUMBER),
        ContractProblem(second, "session_number", DUPLICATE_SESSION_NUMBER),
    )
    assert scored.problems[2] == (
        ContractProblem(rated, "alliance_goals", rating_out_of_range(e.profile)),
    )
    assert scored.problems[4] == (ContractProblem(None, "sessions", NO_SESSIONS),)
    outcomes = dict(scored.by_episode())
    assert {j: type(o).__name__ for j, o in outcomes.items()} == {
        0: "RiskScore", 1: "tuple", 2: "tuple", 3: "RiskScore", 4: "tuple"
    }  # fmt: skip
    assert outcomes[3].client_id == ids[3]  # type: ignore[union-attr]


def test_landmark_k_scores_those_who_reached_it(scorer, cohort, episodes) -> None:
    scored = scorer.score(episodes, landmarks=5)
    reached = cohort.sessions.groupby("client_id")["session_number"].max() >= 5
    assert scored.n_rows == int(reached.sum()) and not scored.problems
    assert set(scored.landmark.tolist()) == {5}
    missing = [j for j, o in scored.by_episode() if o is None]
    assert len(missing) == int((~reached).sum())


def test_save_load_round_trip_is_identical(scorer, episodes, tmp_path) -> None:
    scorer.save(tmp_path)
    again = Scorer.load(tmp_path)
    a, b = scorer.score(episodes), again.score(episodes)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.risk_band, b.risk_band)
    assert [r.explanation.drivers for r in a.results] == [r.explanation.drivers for r in b.results]
    assert again.registry == scorer.registry
    assert again.model_card == "# card\n"
    assert again.metadata == {"note": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [BOOSTER_FILE, SCORER_FILE, "model_card.md"]
    )  # plain files only: no pickle, nothing compiled


def test_load_refuses_other_xgboost_minor_version(scorer, tmp_path) -> None:
    scorer.save(tmp_path)
    doc = json.loads((tmp_path / SCORER_FILE).read_text())
    doc["libraries"]["xgboost"] = "1.7.0"
    (tmp_path / SCORER_FILE).write_text(json.dumps(doc))
    with pytest.raises(IncompatibleModelError, match="xgboost 1.7.0"):
        Scorer.load(tmp_path)


def test_load_refuses_corrupt_booster_and_missing_json(scorer, tmp_path) -> None:
    scorer.save(tmp_path)
    (tmp_path / BOOSTER_FILE).write_bytes(b"not a booster")
    with pytest.raises(IncompatibleModelError, match="cannot be read"):
        Scorer.load(tmp_path)
    (tmp_path / SCORER_FILE).unlink()
    with pytest.raises(IncompatibleModelError, match="missing"):
        Scorer.load(tmp_path)


def test_booster_with_other_columns_is_incompatible(scorer) -> None:
    other = feature_registry(get_profile("srs"))
    with pytest.raises(IncompatibleModelError, match="feature columns"):
        Scorer(booster=scorer.booster, calibrator=scorer.calibrator, registry=other,
               bands=scorer.bands)  # fmt: skip


def test_scoring_another_profile_is_refused(scorer) -> None:
    srs = simulate_cohort(20, seed=1, profile="srs")
    with pytest.raises(IncompatibleModelError, match="trained on 'alliance6'"):
        scorer.score(_episodes(srs))


def test_self_check_passes_and_catches_broken_calibration(scorer) -> None:
    assert scorer.self_check().n_rows == 1
    broken = Scorer(
        booster=scorer.booster,
        calibrator={"method": "sigmoid", "slope": float("nan"), "intercept": 0.0},
        registry=scorer.registry,
        bands=scorer.bands,
    )
    with pytest.raises(SelfCheckError, match="probabilities"):
        broken.self_check()


def test_risk_bands_from_probabilities_and_assignment() -> None:
    p = np.linspace(0.0, 0.5, 101)
    bands = RiskBands.from_probabilities(p, high_share=0.10)
    assert bands.moderate_from == pytest.approx(0.25)
    assert bands.high_from == pytest.approx(0.45)
    labels = bands.assign(p)
    assert (labels == "high").mean() == pytest.approx(0.11, abs=0.011)
    assert labels[0] == "low" and labels[-1] == "high"
    with pytest.raises(ValueError, match="moderate_from <= high_from"):
        RiskBands(0.6, 0.5)


def test_risk_bands_by_net_benefit_alert_at_the_threshold_probability() -> None:
    p = np.linspace(0.0, 0.5, 101)
    bands = RiskBands.from_probabilities(p, rule=HighBandRule.parse("net-benefit:0.30"))
    assert bands.high_from == 0.30 and bands.threshold_probability == 0.30
    assert bands.rule == "net_benefit"
    assert bands.high_share == pytest.approx(np.mean(p >= 0.30))
    assert bands.moderate_from == pytest.approx(0.25)
    # A threshold below the mean risk: moderate is empty, never above high.
    low = RiskBands.from_probabilities(p, rule=HighBandRule("net_benefit", 0.1))
    assert low.moderate_from == low.high_from == 0.1
    by_rate = RiskBands.from_probabilities(p, rule=HighBandRule.parse("alert-rate:0.2"))
    assert by_rate.rule == "alert_rate" and by_rate.high_share == 0.2
    assert by_rate.high_from == pytest.approx(0.40)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("net-benefit", "alert-rate:SHARE or net-benefit:THRESHOLD"),
        ("alert-rate:ten", "alert-rate:SHARE or net-benefit:THRESHOLD"),
        ("top:0.1", "alert-rate or net-benefit"),
        ("net-benefit:1.5", "strictly between 0 and 1"),
        ("alert-rate:0", "strictly between 0 and 1"),
    ],
)
def test_high_band_rule_parse_refuses_bad_text(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HighBandRule.parse(text)


def test_high_band_rule_round_trips_as_text() -> None:
    for text in ("alert-rate:0.1", "net-benefit:0.25"):
        assert str(HighBandRule.parse(text)) == text
    assert HighBandRule.parse(" Net_Benefit:0.25 ") == HighBandRule("net_benefit", 0.25)


def test_band_rule_round_trips_through_the_saved_model(scorer, tmp_path) -> None:
    bands = RiskBands.from_probabilities(
        np.linspace(0.01, 0.6, 200), rule=HighBandRule("net_benefit", 0.25)
    )
    with_rule = Scorer(
        booster=scorer.booster,
        calibrator=scorer.calibrator,
        registry=scorer.registry,
        bands=bands,
    )
    with_rule.save(tmp_path)
    saved = json.loads((tmp_path / SCORER_FILE).read_text())["bands"]
    assert saved["rule"] == "net_benefit" and saved["threshold_probability"] == 0.25
    assert Scorer.load(tmp_path).bands == bands


def test_a_model_saved_before_band_rules_loads_as_alert_rate(scorer, tmp_path) -> None:
    scorer.save(tmp_path)
    doc = json.loads((tmp_path / SCORER_FILE).read_text())
    doc["bands"] = {"moderate_from": 0.2, "high_from": 0.5, "high_share": 0.1}
    (tmp_path / SCORER_FILE).write_text(json.dumps(doc))
    bands = Scorer.load(tmp_path).bands
    assert bands.rule == "alert_rate" and bands.threshold_probability is None
    assert bands.to_dict() == {
        "moderate_from": 0.2, "high_from": 0.5, "high_share": 0.1, "rule": "alert_rate"
    }  # fmt: skip


def test_serving_booster_is_single_threaded(scorer) -> None:
    config = json.loads(scorer.booster.save_config())
    assert int(config["learner"]["generic_param"]["nthread"]) == 1
    assert isinstance(scorer.booster, xgb.Booster)


def test_risk_bands_refuse_a_two_column_probability_array() -> None:
    p = np.linspace(0.01, 0.6, 50)
    with pytest.raises(ValueError, match="1-D array"):
        RiskBands.from_probabilities(np.column_stack([1 - p, p]))


def test_explain_false_gives_the_same_probabilities_and_bands_without_treeshap(
    scorer, episodes, monkeypatch
) -> None:
    explained = scorer.score(episodes, landmarks="all")

    def no_treeshap(*_args, **_kwargs):
        raise AssertionError("TreeSHAP ran for explain=False")

    monkeypatch.setattr(scorer, "explain_matrix", no_treeshap)
    plain = scorer.score(episodes, landmarks="all", explain=False)
    assert plain.n_rows == explained.n_rows > 100
    np.testing.assert_array_equal(plain.episode, explained.episode)
    np.testing.assert_array_equal(plain.landmark, explained.landmark)
    np.testing.assert_array_equal(plain.features, explained.features)
    # The margin is xgboost's (float32) instead of the sum of the contributions (float64).
    np.testing.assert_allclose(plain.probability, explained.probability, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(plain.risk_band, explained.risk_band)
    with pytest.raises(ValueError, match="explain=False"):
        _ = plain.results
