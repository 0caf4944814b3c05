"""End to end on a tiny simulated cohort: train, register, promote, load, score, gate."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from features.contract import CLIENT_ID
from features.episodes import Episodes
from features.validation import normalise_clients, normalise_sessions
from models.booster import margin
from models.calibration import SPACE_CALIBRATED, SPACE_UNCALIBRATED
from models.pyfunc import load_scorer
from training.pipeline import TrainConfig, train_model
from training.runlog import REFERENCE_ARTIFACT
from training.simulate import simulate_cohort, write_cohort
from training.tracking import configure_mlflow

TINY = TrainConfig(n_trials=1, n_boot=20, seed=0)


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(900, seed=21)


@pytest.fixture(scope="module")
def trained(cohort):
    return train_model(cohort.sessions, cohort.clients, cohort.profile, TINY)


def test_probabilities_are_valid_and_explanations_add_up(trained) -> None:
    e = trained.scorer.explain_matrix(trained.evaluation.data.X)
    assert ((e.probability >= 0) & (e.probability <= 1)).all()
    np.testing.assert_allclose(e.base_logit + e.group_contributions.sum(1), e.logit, atol=1e-6)
    # The label must say which space adds up: exactly the calibrated log-odds for sigmoid
    # (where expit(logit) is the probability itself), the raw margin for isotonic.
    if trained.scorer.calibrator["method"] == "sigmoid":
        assert e.space == SPACE_CALIBRATED
        np.testing.assert_allclose(1 / (1 + np.exp(-e.logit)), e.probability, atol=1e-9)
    else:
        assert e.space == SPACE_UNCALIBRATED
        np.testing.assert_allclose(
            e.logit, margin(trained.scorer.booster, data_x(trained)), atol=1e-5
        )
    np.testing.assert_allclose(
        trained.scorer.predict_proba(trained.evaluation.data.X), e.probability, atol=1e-5
    )


def data_x(trained) -> np.ndarray:
    return trained.evaluation.data.X


def test_the_reference_profile_is_the_calibration_splits_scores(trained, cohort) -> None:
    reference = trained.scorer.reference
    assert reference is not None and "calibration split" in reference.rows
    calibration = trained.splits.calibration
    ended = cohort.clients[
        cohort.clients[CLIENT_ID].isin(calibration)
        & cohort.clients["outcome"].isin(("completed", "dropout"))
    ]
    scored = trained.scorer.score(
        Episodes.from_frames(
            normalise_sessions(
                cohort.sessions[cohort.sessions[CLIENT_ID].isin(ended[CLIENT_ID])], cohort.profile
            ),
            normalise_clients(ended),
            cohort.profile,
        ),
        landmarks="training",
    )
    assert reference.distribution["score"]["n_rows"] == scored.n_rows
    # The features come from every development client (train, validation, calibration).
    assert reference.distribution["n_clients"] > 2 * reference.distribution["score"]["n_clients"]
    bands = trained.scorer.bands.assign(scored.probability)
    for band, share in reference.distribution["bands"].items():
        assert share == pytest.approx(np.mean(bands == band))
    # Bands were set on these rows: about high_share of them are high.
    assert reference.distribution["bands"]["high"] == pytest.approx(0.10, abs=0.03)


def test_risk_bands_sit_at_the_base_rate_and_the_top_decile(trained) -> None:
    bands = trained.scorer.bands
    p = trained.evaluation.probability
    y = trained.evaluation.data.y
    # moderate starts at the average calibrated risk, near the observed dropout rate per row ...
    assert abs(bands.moderate_from - y.mean()) < 0.08, (bands, y.mean())
    # ... and about a tenth of unseen rows are high (set on the calibration split, not on these).
    assert 0.04 < float((p >= bands.high_from).mean()) < 0.2, bands


def test_calibration_keeps_or_improves_brier(trained, cohort) -> None:
    from features.build import pack_frames
    from training.landmarks import landmark_set

    arrays = pack_frames(cohort.sessions, cohort.clients, cohort.profile)
    data = landmark_set(arrays, cohort.clients, trained.scorer.registry, k_max=20)
    # On held-out clients: the served booster is refitted on every development client
    # (training.crossfit), so its raw margins on the calibration split are in-sample.
    cal = data.subset(trained.splits.test)
    raw = 1 / (1 + np.exp(-margin(trained.scorer.booster, cal.X)))
    calibrated = trained.scorer.explain_matrix(cal.X).probability
    brier = lambda p: float(np.mean((p - cal.y) ** 2))  # noqa: E731
    assert brier(calibrated) <= brier(raw) + 1e-4


def test_no_client_in_two_splits_and_test_rows_are_test_clients(trained) -> None:
    s = trained.splits
    ids = np.concatenate([s.train, s.valid, s.calibration, s.test])
    assert len(ids) == len(set(ids.tolist()))
    assert set(trained.evaluation.data.client_id.tolist()) <= set(s.test.tolist())


def test_landmark_table_names_its_landmarks_and_adds_the_bands(trained) -> None:
    ev = trained.evaluation
    table = ev.landmark_table()
    assert list(table.columns[:3]) == ["landmark", "n", "n_clients"]
    for column in ("prevalence", "mean_probability", "auroc", "ece", "calibration_slope",
                   "calibration_intercept"):  # fmt: skip
        assert column in table.columns
    is_band = table["landmark"].map(lambda v: isinstance(v, str))
    singles, bands = table[~is_band], ev.band_table()
    assert bands["landmark"].tolist() == ["1-3", "4-6", "7-10", "11+"][: len(bands)]
    assert bands["n"].sum() == singles["n"].sum() == ev.data.y.size
    # A client has one row per landmark, so a band's clients are its first landmark's.
    assert bands["n_clients"].iloc[0] == singles["n_clients"].iloc[0]
    for key in ("ece", "citl", "slope", "n_clients"):
        assert np.isfinite(ev.model.overall[f"landmarks_1_3_{key}"])
    assert ev.model.overall["landmarks_1_3_citl"] == bands["calibration_intercept"].iloc[0]
    assert "landmark_band" not in set(ev.subgroup_table()["subgroup"])


def test_report_has_every_section(trained) -> None:
    ev = trained.evaluation
    for key in ("auroc", "auprc", "brier", "ece", "calibration_slope", "calibration_intercept",
                "flag_sensitivity", "flag_ppv", "auroc_ci_low", "brier_ci_high"):  # fmt: skip
        assert key in ev.model.overall
    assert set(ev.model.per_group) == {"landmark", "clinic_id", "age_band", "gender",
                                       "referral_source", "landmark_band"}  # fmt: skip
    assert list(ev.comparison()["model"]) == [
        "model", "logistic_early_alliance_attendance", "alert_rule"
    ]  # fmt: skip
    assert (ev.subgroup_table()["n"] > 0).all()
    assert set(ev.importance.index) == set(trained.scorer.registry.groups)


def _run(args: list[str], uri: str) -> object:
    result = CliRunner().invoke(app, args, env={"MLFLOW_TRACKING_URI": uri})
    return result


@pytest.fixture
def store(mlflow_sqlite_uri, tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    configure_mlflow(project_root=tmp_path, uri=mlflow_sqlite_uri)
    return mlflow_sqlite_uri


def test_cli_round_trip_train_promote_load_score_and_gate(cohort, store, tmp_path: Path) -> None:
    data = tmp_path / "cohort"
    write_cohort(cohort, data)
    args = ["--sessions", str(data / "sessions.csv"), "--clients", str(data / "clients.csv")]

    first = _run(["train", *args, "--trials", "1"], store)
    assert first.exit_code == 0, first.output
    assert "registered alliance-risk version 1" in " ".join(first.output.split())
    # A tiny cohort's gates may pass or fail by chance; --force promotes either way and the
    # record says whether it was needed.
    forced = _run(["promote", "--version", "1", "--force", "--reason", "tiny test cohort"], store)
    assert forced.exit_code == 0, forced.output
    client = mlflow.MlflowClient()
    tags = client.get_model_version("alliance-risk", "1").tags
    checks = json.loads(tags["promotion.gates"])
    assert "landmark_band_calibration" in {c["name"] for c in checks}
    needed = not all(c["passed"] for c in checks)
    assert tags["promotion.forced"] == str(needed).lower()
    assert tags["promotion.reason"] == "tiny test cohort"
    assert "promotion.actor" in tags and "promotion.at" in tags

    # The champion loads with plain MLflow and needs nothing else to score.
    pyfunc = mlflow.pyfunc.load_model("models:/alliance-risk@champion")
    # It holds source and data only: no extension module or bytecode ties it to a platform.
    logged = Path(mlflow.artifacts.download_artifacts("models:/alliance-risk@champion",
                                                      dst_path=str(tmp_path / "logged")))  # fmt: skip
    code = [p for p in (logged / "code").rglob("*") if p.is_file()]
    assert code and all(p.suffix == ".py" for p in code), sorted({p.suffix for p in code})
    assert {"scorer.py", "kernels.py", "facts.py"} <= {p.name for p in code}
    compiled = (".so", ".pyd", ".dylib", ".dll", ".pyc", ".c")
    assert not [p for p in logged.rglob("*") if p.suffix in compiled]
    path_before = list(sys.path)
    scorer = load_scorer("models:/alliance-risk@champion")
    load_scorer("models:/alliance-risk@champion")  # a reload leaves no code folder behind
    assert sys.path == path_before
    # Plain MLflow scores raw episodes (one row per appointment, client fields repeated).
    five = set(cohort.clients[CLIENT_ID].iloc[:5])
    raw = cohort.sessions[cohort.sessions[CLIENT_ID].isin(five)].merge(
        cohort.clients[[CLIENT_ID, "intake_date", "age"]], on=CLIENT_ID
    )
    out = pyfunc.predict(
        raw.assign(
            session_date=raw["session_date"].dt.strftime("%Y-%m-%d"),
            intake_date=raw["intake_date"].dt.strftime("%Y-%m-%d"),
        )
    )
    expected = {r.client_id: r.probability for r in scorer.score(_episodes(cohort)).results}
    assert set(out[CLIENT_ID]) == five
    np.testing.assert_allclose(out["probability"], [expected[c] for c in out[CLIENT_ID]])
    assert scorer.metadata["simulated"] is True
    assert "simulated data" in scorer.model_card
    # The reference profile travels inside the model, and sits beside it for analysts.
    assert scorer.reference is not None
    assert sum(scorer.reference.distribution["bands"].values()) == pytest.approx(1.0)
    assert set(scorer.reference.distribution["features"]) == set(scorer.registry.groups)
    assert set(scorer.reference.typical.overall) == set(cohort.profile.element_names)
    run_id = scorer.metadata["run_id"]
    logged_profile = mlflow.artifacts.load_dict(f"runs:/{run_id}/{REFERENCE_ARTIFACT}")
    assert logged_profile == scorer.reference.to_dict()

    scores = tmp_path / "scores.csv"
    done = _run(["score", "--model", "models:/alliance-risk@champion", *args, "--out",
                 str(scores)], store)  # fmt: skip
    assert done.exit_code == 0, done.output
    frame = pd.read_csv(scores)
    # The caseload by default: open episodes only.
    ongoing = cohort.clients.loc[cohort.clients["outcome"] == "ongoing", CLIENT_ID]
    assert sorted(frame[CLIENT_ID]) == sorted(ongoing) and len(frame) > 0
    assert frame["probability"].between(0, 1).all()
    assert set(frame["risk_band"]) <= {"low", "moderate", "high"}
    assert (frame["model_version"] == 1).all()
    assert frame["driver_1"].str.len().gt(0).all() and "nan" not in " ".join(frame["driver_1"])
    assert {"clinic_id", "therapist_id", "scored_at", "focus_1", "driver_3"} <= set(frame.columns)
    alliance = frame["group_1"].isin(cohort.profile.element_names)
    assert frame.loc[alliance, "focus_1"].notna().all()
    everyone = _run(["score", "--model", "models:/alliance-risk@champion", *args, "--all",
                     "--out", str(scores)], store)  # fmt: skip
    assert everyone.exit_code == 0, everyone.output
    assert len(pd.read_csv(scores)) == cohort.clients[CLIENT_ID].nunique()

    # A model fitted to noise is worse. Shuffle outcomes only among the clients that train it
    # (intakes before the temporal test cut): the test clients keep their true outcomes, so
    # champion and candidate are judged on the same, real labels and the AUROC gate must trip.
    worse = tmp_path / "shuffled"
    shutil.copytree(data, worse)
    clients = pd.read_csv(worse / "clients.csv", dtype=str)
    intake = pd.to_datetime(clients["intake_date"])
    cut = intake[clients["outcome"] != "ongoing"].quantile(0.8, interpolation="higher")
    early = (intake < cut).to_numpy()
    rng = np.random.default_rng(0)
    clients.loc[early, "outcome"] = rng.permutation(clients.loc[early, "outcome"].to_numpy())
    clients.to_csv(worse / "clients.csv", index=False)
    bad_args = ["--sessions", str(worse / "sessions.csv"), "--clients", str(worse / "clients.csv")]
    second = _run(["train", *bad_args, "--trials", "1"], store)
    assert second.exit_code == 0, second.output
    refused = _run(["promote", "--name", "alliance-risk", "--version", "2"], store)
    assert refused.exit_code == 1, refused.output
    assert "Refused" in refused.stderr and "Refused" not in refused.stdout
    assert str(client.get_model_version_by_alias("alliance-risk", "champion").version) == "1"
    tags = client.get_model_version("alliance-risk", "2").tags
    assert "auroc_drop" in tags["promotion.failed_checks"]
    assert _run(["promote", "--version", "2", "--force"], store).exit_code == 2


def _episodes(cohort) -> Episodes:
    return Episodes.from_frames(
        normalise_sessions(cohort.sessions, cohort.profile),
        normalise_clients(cohort.clients),
        cohort.profile,
    )


def test_evaluation_scores_exactly_the_test_landmarks_through_the_scorer(trained, cohort) -> None:
    """Evaluation runs the scorer on the test episodes: its rows are the test split's labelled
    landmark rows, with the same features the model was fitted on."""
    from features.build import pack_frames
    from training.landmarks import landmark_set

    arrays = pack_frames(cohort.sessions, cohort.clients, cohort.profile)
    test = landmark_set(arrays, cohort.clients, trained.scorer.registry, k_max=20).subset(
        trained.splits.test
    )
    ev = trained.evaluation.data
    key = lambda d: list(zip(d.client_id, d.context["landmark"], strict=True))  # noqa: E731
    assert sorted(key(ev)) == sorted(key(test)) and len(test.y) > 0
    by_key = dict(zip(key(ev), range(len(ev.y)), strict=True))
    rows = [by_key[k] for k in key(test)]
    np.testing.assert_array_equal(ev.X[rows], test.X)
    np.testing.assert_array_equal(ev.y[rows], test.y)


def test_score_cohort_scores_the_caseload_and_counts_everyone_it_leaves_out(
    trained, cohort, tmp_path
) -> None:
    import features
    import models
    from training.scoring import score_cohort

    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(model_dir),
        python_model=str(Path(models.__file__).parent / "mlflow_entry.py"),
        artifacts={"scorer": str(trained.scorer.save(tmp_path / "scorer"))},
        code_paths=[str(Path(models.__file__).parent), str(Path(features.__file__).parent)],
        pip_requirements=["mlflow"],
    )
    sessions = normalise_sessions(cohort.sessions, cohort.profile)
    new = cohort.clients.iloc[:1].assign(client_id="new-client", outcome="ongoing")
    clients = normalise_clients(pd.concat([cohort.clients, new], ignore_index=True))
    ongoing = clients.loc[clients["outcome"] == "ongoing", CLIENT_ID]

    caseload = score_cohort(str(model_dir), sessions, clients, cohort.profile)
    assert sorted(caseload.frame[CLIENT_ID]) == sorted(set(ongoing) - {"new-client"})
    assert caseload.no_appointments == 1 and caseload.refused == 0
    assert caseload.skipped_ended == len(clients) - len(ongoing)
    assert caseload.not_at_landmark == 0
    assert (caseload.frame["model_version"] == "local").all()

    at_5 = score_cohort(str(model_dir), sessions, clients, cohort.profile, landmark=5,
                        include_ended=True)  # fmt: skip
    numbered_5 = set(sessions.loc[sessions["session_number"] == 5, CLIENT_ID])
    assert set(at_5.frame[CLIENT_ID]) == numbered_5 and (at_5.frame["landmark"] == 5).all()
    assert at_5.skipped_ended == 0 and at_5.no_appointments == 1
    assert at_5.not_at_landmark == len(clients) - 1 - len(numbered_5)


def test_the_served_population_is_the_evaluated_one(trained, cohort) -> None:
    """``score --landmark k --include-ended`` (score_tables, the one scoring path) scores the
    ended test clients at exactly the evaluation's landmark-k rows, an ended episode's last
    appointment included: serving cannot know an appointment is the last one, so training and
    evaluation must not leave it out (issue 19: leaving it out shifted calibration-in-the-large)."""
    from training.scoring import score_tables

    sessions = normalise_sessions(cohort.sessions, cohort.profile)
    clients = normalise_clients(cohort.clients)
    test = clients[
        clients[CLIENT_ID].isin(trained.splits.test)
        & clients["outcome"].isin(("completed", "dropout"))
    ]
    sessions = sessions[sessions[CLIENT_ID].isin(test[CLIENT_ID])]
    last = sessions.groupby(CLIENT_ID)["session_number"].max()
    ev = trained.evaluation.data
    landmark = ev.context["landmark"].to_numpy()
    ended_at_last = 0
    for k in (1, 2, 3, 5, 8):
        served = score_tables(trained.scorer, sessions, test, cohort.profile, model_name="m",
                              model_version="1", landmark=k, include_ended=True)  # fmt: skip
        at_k = landmark == k
        evaluated = pd.Series(trained.evaluation.probability[at_k], index=ev.client_id[at_k])
        assert sorted(served.frame[CLIENT_ID]) == sorted(evaluated.index)
        np.testing.assert_allclose(
            served.frame.set_index(CLIENT_ID)["probability"].sort_index(),
            evaluated.sort_index(),
            atol=1e-6,
        )
        ended_at_last += int((last[served.frame[CLIENT_ID]] == k).sum())
    assert ended_at_last > 0  # some clients' last appointment is among the landmarks compared
