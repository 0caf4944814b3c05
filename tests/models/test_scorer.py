"""The scorer: one inference path, exact explanations, safe persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from features.arrays import SessionArrays
from features.build import build_features
from features.profiles import get_profile
from features.registry import feature_registry
from models.booster import fit_booster, margin
from models.calibration import MarginCalibrator
from models.scorer import (
    BOOSTER_FILE,
    SCORER_FILE,
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


def test_frames_arrays_and_matrix_paths_agree(scorer, cohort) -> None:
    by_frames = scorer.score_frames(cohort.sessions, cohort.clients)
    arrays = SessionArrays.from_frames(cohort.sessions, cohort.clients, scorer.profile)
    by_arrays = scorer.score_arrays(arrays)
    by_matrix = scorer.score_matrix(by_frames.features)
    np.testing.assert_array_equal(by_frames.probability, by_arrays.probability)
    np.testing.assert_allclose(by_frames.probability, by_matrix.probability, rtol=0, atol=1e-12)
    assert by_frames.n_rows == cohort.clients["client_id"].nunique()


def test_single_client_path_equals_its_row_in_the_batch(scorer, cohort) -> None:
    batch = scorer.score_frames(cohort.sessions, cohort.clients)
    cid = batch.client_id[7]
    s = cohort.sessions[cohort.sessions["client_id"] == cid]
    c = cohort.clients[cohort.clients["client_id"] == cid].iloc[0]
    one = SessionArrays.single_client(
        scorer.profile,
        session_number=s["session_number"].to_numpy(),
        session_date=s["session_date"].to_numpy(),
        attendance=s["attendance"].tolist(),
        ratings=np.vstack([s[col].to_numpy(float) for col in scorer.profile.columns]),
        intake_date=c["intake_date"].to_datetime64(),
        client_id=cid,
    )
    alone = scorer.score_arrays(one)
    assert alone.probability[0] == pytest.approx(batch.probability[7], abs=1e-12)
    assert alone.landmark[0] == batch.landmark[7]


def test_explanation_adds_up_exactly_and_matches_probability(scorer, cohort) -> None:
    batch = scorer.score_frames(cohort.sessions, cohort.clients, landmarks="all")
    e = batch.explanation
    np.testing.assert_allclose(e.base_logit + e.group_contributions.sum(1), e.logit, atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-e.logit)), e.probability, atol=1e-12)
    # The probability also matches the booster's own margin through the calibrator.
    m = margin(scorer.booster, batch.features)
    direct = 1 / (1 + np.exp(-(scorer.calibrator["slope"] * m + scorer.calibrator["intercept"])))
    np.testing.assert_allclose(direct, e.probability, atol=1e-5)
    assert ((e.probability >= 0) & (e.probability <= 1)).all()


def test_save_load_round_trip_is_identical(scorer, cohort, tmp_path) -> None:
    scorer.save(tmp_path)
    again = Scorer.load(tmp_path)
    a = scorer.score_frames(cohort.sessions, cohort.clients)
    b = again.score_frames(cohort.sessions, cohort.clients)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.risk_band, b.risk_band)
    assert again.registry == scorer.registry
    assert again.model_card == "# card\n"
    assert again.metadata == {"note": "test"}


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
        scorer.score_frames(srs.sessions, srs.clients)


def test_self_check_passes_and_catches_broken_calibration(scorer, cohort) -> None:
    X = scorer.score_frames(cohort.sessions, cohort.clients).features[:5]
    assert scorer.self_check(X).n_rows == 5
    broken = Scorer(
        booster=scorer.booster,
        calibrator={"method": "sigmoid", "slope": float("nan"), "intercept": 0.0},
        registry=scorer.registry,
        bands=scorer.bands,
    )
    with pytest.raises(SelfCheckError, match="probabilities"):
        broken.self_check(X)


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


def test_to_frame_top_groups_are_signed_and_largest(scorer, cohort) -> None:
    batch = scorer.score_frames(cohort.sessions, cohort.clients)
    frame = batch.to_frame(top_groups=3)
    gc = batch.explanation.group_contributions
    names = list(batch.explanation.group_names)
    row = frame.iloc[0]
    top = np.argsort(-np.abs(gc[0]))[:3]
    assert [row[f"group_{i + 1}"] for i in range(3)] == [names[j] for j in top]
    assert row["contribution_1"] == pytest.approx(gc[0, top[0]])
    assert isinstance(frame.index, pd.MultiIndex)


def test_serving_booster_is_single_threaded(scorer) -> None:
    config = json.loads(scorer.booster.save_config())
    assert int(config["learner"]["generic_param"]["nthread"]) == 1
    assert isinstance(scorer.booster, xgb.Booster)


def test_risk_bands_refuse_a_two_column_probability_array() -> None:
    p = np.linspace(0.01, 0.6, 50)
    with pytest.raises(ValueError, match="1-D array"):
        RiskBands.from_probabilities(np.column_stack([1 - p, p]))
