"""MLflow as analysts use it (issue 19, item 4), on a real private SQLite store.

One tiny model is trained, logged and registered once per module, and one external evaluation
is logged against it. The tests read back what an analyst sees: the version's description and
the card's version, the evaluation's metrics on the logged model's page, the datasets, where the
artifacts went, and the logged pyfunc scoring raw episodes (in process and through a real
``mlflow models serve`` on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.contract import CLIENT_ID
from models.episode_frame import RESULT_COLUMNS, frame_columns
from models.pyfunc import load_scorer
from tests.conftest import HOST, _mlflow_command, _stop, _tail, free_port
from training.pipeline import TrainConfig, train_model
from training.promotion import evaluate_on
from training.report import PLACEHOLDER
from training.runlog import (
    REGISTERED_MODEL_DESCRIPTION,
    LoggedRun,
    log_evaluation_run,
    log_training_run,
)
from training.scoring import score_tables
from training.simulate import Cohort, simulate_cohort
from training.tracking import TAG_DATASET_FINGERPRINT, configure_mlflow, dataset_fingerprint

ROOT = Path(__file__).resolve().parents[2]
NAME = "analyst-model"


@dataclass(frozen=True)
class Logged:
    uri: str
    store: Path
    cohort: Cohort
    external: Cohort
    train: LoggedRun
    evaluation: LoggedRun
    client: MlflowClient

    @property
    def model_uri(self) -> str:
        return f"models:/{NAME}/{self.train.model_version}"


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory, mlflow_sqlite_template: Path
) -> Iterator[Logged]:
    store = tmp_path_factory.mktemp("analyst-store")
    shutil.copyfile(mlflow_sqlite_template, store / "mlflow.db")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    configure_mlflow(uri=uri)
    try:
        cohort = simulate_cohort(500, seed=41)
        result = train_model(
            cohort.sessions, cohort.clients, cohort.profile,
            TrainConfig(n_trials=1, n_boot=0, seed=0),
        )  # fmt: skip
        test = cohort.clients[CLIENT_ID].isin(result.splits.test)
        train, _ = log_training_run(
            result,
            sessions=cohort.sessions,
            clients=cohort.clients,
            test_sessions=cohort.sessions[cohort.sessions[CLIENT_ID].isin(result.splits.test)],
            test_clients=cohort.clients[test],
            experiment="analyst",
            register_as=NAME,
            simulated=True,
            source="sessions.csv, clients.csv",
        )
        external = simulate_cohort(300, seed=7)
        scorer = load_scorer(f"models:/{NAME}/{train.model_version}")
        evaluation = log_evaluation_run(
            evaluate_on(scorer, external.sessions, external.clients),
            model_uri=f"models:/{NAME}/{train.model_version}",
            sessions=external.sessions,
            clients=external.clients,
            experiment="analyst",
            simulated=True,
            source="external_sessions.csv, external_clients.csv",
        )
        yield Logged(uri, store, cohort, external, train, evaluation, MlflowClient(uri, uri))
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _model_id(logged: Logged) -> str:
    version = logged.client.get_model_version(NAME, str(logged.train.model_version))
    assert version.source.startswith("models:/m-")
    return version.source.removeprefix("models:/")


def raw_frame(cohort: Cohort, n: int = 3) -> pd.DataFrame:
    """The first ``n`` clients as an episode frame, dates as ISO text (as a CSV export)."""
    ids = cohort.clients[CLIENT_ID].iloc[:n]
    s = cohort.sessions[cohort.sessions[CLIENT_ID].isin(ids)]
    clients = cohort.clients[[CLIENT_ID, "intake_date", "age"]]
    frame = s.merge(clients, on=CLIENT_ID, how="left")
    frame = frame.assign(
        session_date=frame["session_date"].dt.strftime("%Y-%m-%d"),
        intake_date=frame["intake_date"].dt.strftime("%Y-%m-%d"),
    )
    return frame[list(frame_columns(cohort.profile))]


# -- 1. descriptions and the card's version ---------------------------------------------------


def test_version_description_is_the_card_summary_and_the_card_names_the_version(
    logged: Logged,
) -> None:
    version = str(logged.train.model_version)
    registered = logged.client.get_model_version(NAME, version)
    # Registered before its files were written, it still names its run (promote reads it).
    assert registered.run_id == logged.train.run_id
    described = registered.description
    assert f"{NAME} version {version}" in described
    assert "AUROC" in described and "simulated" in described
    assert logged.train.run_id in described
    # The dropout rate reads as a percentage per episode, not 0.2753623188405797.
    assert re.search(r"dropout rate \d+\.\d% \(per episode\)", described), described
    assert logged.client.get_registered_model(NAME).description == REGISTERED_MODEL_DESCRIPTION
    run_card = logged.client.download_artifacts(
        logged.train.run_id, "report/model_card.md", str(logged.store / "card")
    )
    card_text = Path(run_card).read_text()
    # The card says where the calibrator and the bands were fitted (cross-fit by default).
    assert "out-of-fold margins of the train and validation clients" in card_text
    assert "calibration split (never used for fitting)" not in card_text
    # ... and that they are weighted for censoring, as the run was trained (IPCW by default).
    assert (
        "held-out landmark rows of every development client (weighted for censoring) are *high*"
        in card_text
    )

    card_path = logged.client.download_artifacts(
        logged.train.run_id, "report/model_card.md", str(logged.store / "download")
    )
    run_card = Path(card_path).read_text()
    assert f"- **Version:** {version}" in run_card
    assert f"(version {version})" in run_card.splitlines()[0]
    # The copy inside the model (what GET /v1/model shows) names it too.
    assert load_scorer(logged.model_uri).model_card == run_card
    assert f"- **Version:** {PLACEHOLDER}" not in run_card


def test_an_operator_edited_registered_description_is_kept(logged: Logged) -> None:
    from training.runlog import _describe_registry

    logged.client.update_registered_model(NAME, description="Owned by the clinic's analysts.")
    try:
        _describe_registry(logged.client, NAME, str(logged.train.model_version), "summary", {})
        assert logged.client.get_registered_model(NAME).description == (
            "Owned by the clinic's analysts."
        )
    finally:
        logged.client.update_registered_model(NAME, description=REGISTERED_MODEL_DESCRIPTION)


# -- 2. evaluation runs on the model's page ---------------------------------------------------


def test_evaluation_metrics_show_on_the_logged_model(logged: Logged) -> None:
    model = logged.client.get_logged_model(_model_id(logged))
    by_run: dict[str, dict[str, float]] = {}
    datasets: dict[str, set[str | None]] = {}
    for metric in model.metrics or []:
        by_run.setdefault(metric.run_id, {})[metric.key] = metric.value
        datasets.setdefault(metric.run_id, set()).add(metric.dataset_name)
    evaluation = logged.client.get_run(logged.evaluation.run_id)
    # An external cohort's metrics are evaluation_*, not the training run's test_*.
    assert evaluation.data.metrics["evaluation_auroc"] == pytest.approx(
        by_run[logged.evaluation.run_id]["evaluation_auroc"]
    )
    assert not any(key.startswith("test_") for key in evaluation.data.metrics)
    assert set(evaluation.data.metrics) <= set(by_run[logged.evaluation.run_id])
    assert datasets[logged.evaluation.run_id] == {"evaluation"}
    # The training run's test metrics are there too, against the test split.
    assert "test_auroc" in by_run[logged.train.run_id]
    assert evaluation.data.tags["evaluated_model_version"] == str(logged.train.model_version)
    assert evaluation.data.tags["evaluated_model_id"] == model.model_id


def test_an_evaluation_run_s_decision_curve_has_the_alert_rule(logged: Logged) -> None:
    """Training runs compare the model with the alert rule clinics use; evaluation runs, which
    fit no baselines, must too (the rule needs no fitting to alert)."""
    for run_id in (logged.train.run_id, logged.evaluation.run_id):
        folder = logged.store / f"decision-{run_id}"
        folder.mkdir()
        path = logged.client.download_artifacts(run_id, "report/decision_curve.csv", str(folder))
        assert "alert rule" in pd.read_csv(path).columns, run_id


def test_the_evaluate_command_s_plots_name_its_data_and_have_the_alert_rule(
    logged: Logged, tmp_path: Path
) -> None:
    """``alliance-risk evaluate`` end to end: its plots are titled with the sessions file it was
    given (never "test set"/"test split"), and its decision curve has the alert rule."""
    from PIL import Image
    from typer.testing import CliRunner

    from cli.main import app
    from training.simulate import write_cohort

    data = tmp_path / "ext"
    write_cohort(logged.external, data)
    before = {r.info.run_id for r in mlflow.search_runs(experiment_names=["analyst"],
                                                        output_format="list")}  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["evaluate", "--sessions", str(data / "sessions.csv"), "--clients",
         str(data / "clients.csv"), "--model", logged.model_uri, "--experiment", "analyst",
         "--bootstrap", "0", "--tracking-uri", logged.uri],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = [r for r in mlflow.search_runs(experiment_names=["analyst"], output_format="list")
              if r.info.run_id not in before]  # fmt: skip
    report = Path(logged.client.download_artifacts(run.info.run_id, "report", str(tmp_path)))
    assert "alert rule" in pd.read_csv(report / "decision_curve.csv").columns
    for name in ("calibration.png", "roc.png", "pr.png", "calibration_ci.png",
                 "decision_curve.png", "landmarks.png"):  # fmt: skip
        title = Image.open(report / name).text["Title"]
        assert "the evaluation cohort (sessions.csv)" in title, (name, title)
        assert "test set" not in title and "test split" not in title, (name, title)


# -- 3. datasets ------------------------------------------------------------------------------


def test_datasets_carry_the_fingerprint_and_no_client_data(logged: Logged) -> None:
    run = logged.client.get_run(logged.train.run_id)
    inputs = {
        d.dataset.name: (d.dataset, {t.key: t.value for t in d.tags})
        for d in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"cohort", "calibration", "test"}
    contexts = {name: tags["mlflow.data.context"] for name, (_, tags) in inputs.items()}
    assert contexts == {"cohort": "training", "calibration": "calibration", "test": "test"}
    cohort_fp = run.data.tags[TAG_DATASET_FINGERPRINT]
    assert cohort_fp == dataset_fingerprint(logged.cohort.sessions, logged.cohort.clients)
    dataset, tags = inputs["cohort"]
    assert tags[TAG_DATASET_FINGERPRINT] == cohort_fp and dataset.digest == cohort_fp[:36]
    assert json.loads(dataset.profile)["num_rows"] == len(logged.cohort.sessions)
    assert "client_id" in dataset.schema

    evaluation = logged.client.get_run(logged.evaluation.run_id)
    (external,) = evaluation.inputs.dataset_inputs
    assert external.dataset.name == "evaluation"
    assert (
        external.dataset.digest
        == dataset_fingerprint(logged.external.sessions, logged.external.clients)[:36]
    )

    stored = [d.dataset for d in run.inputs.dataset_inputs] + [external.dataset]
    text = json.dumps([[d.schema, d.profile, d.source, d.name] for d in stored])
    ids = pd.concat([logged.cohort.clients[CLIENT_ID], logged.external.clients[CLIENT_ID]])
    assert not [cid for cid in ids.astype(str) if cid in text]


# -- 4. artifacts follow the store -------------------------------------------------------------


def test_artifacts_are_stored_beside_the_store_not_in_the_checkout(logged: Logged) -> None:
    beside = (logged.store / "artifacts").as_uri()
    for run_id in (logged.train.run_id, logged.evaluation.run_id):
        assert logged.client.get_run(run_id).info.artifact_uri.startswith(beside)
    model = logged.client.get_logged_model(_model_id(logged))
    assert model.artifact_location.startswith(beside)
    assert not model.artifact_location.startswith(ROOT.as_uri())


# -- 5. the pyfunc scores raw episodes ---------------------------------------------------------


def test_logged_pyfunc_scores_raw_episodes_as_the_scorer_does(logged: Logged) -> None:
    frame = raw_frame(logged.cohort)
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    out = loaded.predict(frame)
    assert list(out.columns) == list(RESULT_COLUMNS)
    ids = list(pd.unique(frame[CLIENT_ID]))
    assert out[CLIENT_ID].tolist() == ids
    assert out["probability"].between(0, 1).all()
    assert out["driver_1"].str.len().gt(0).all()

    # The same numbers as `alliance-risk score` on the contract's two tables.
    cohort = logged.cohort
    sessions = cohort.sessions[cohort.sessions[CLIENT_ID].isin(ids)]
    clients = cohort.clients[cohort.clients[CLIENT_ID].isin(ids)]
    expected = score_tables(
        load_scorer(logged.model_uri), sessions, clients, cohort.profile,
        model_name=NAME, model_version="1", include_ended=True,
    ).frame.set_index(CLIENT_ID)  # fmt: skip
    got = out.set_index(CLIENT_ID).loc[expected.index]
    np.testing.assert_allclose(got["probability"], expected["probability"], rtol=1e-12)
    assert got["risk_band"].tolist() == expected["risk_band"].tolist()
    assert got["driver_1"].tolist() == expected["driver_1"].tolist()

    # Row order does not matter; the landmark parameter scores an earlier appointment.
    shuffled = loaded.predict(frame.sample(frac=1.0, random_state=0))
    np.testing.assert_allclose(
        shuffled.set_index(CLIENT_ID).loc[ids, "probability"],
        out.set_index(CLIENT_ID).loc[ids, "probability"],
    )
    at_two = loaded.predict(frame, params={"landmark": 2})
    assert (at_two["landmark"] == 2).all()
    # Typed dates (a frame read from Parquet) are accepted as well as ISO text.
    typed = frame.assign(
        session_date=pd.to_datetime(frame["session_date"]),
        intake_date=pd.to_datetime(frame["intake_date"]),
    )
    np.testing.assert_allclose(loaded.predict(typed)["probability"], out["probability"])


def test_bad_raw_input_names_the_row_and_field_but_no_value(logged: Logged) -> None:
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    frame = raw_frame(logged.cohort)
    bad = frame.copy()
    bad.loc[2, "session_date"] = "2024-13-45"
    bad.loc[4, "attendance"] = "maybe"
    bad.loc[5, "intake_date"] = "1999-01-01"
    with pytest.raises(MlflowException) as info:
        loaded.predict(bad)
    message = info.value.message
    assert "row 2, session_date" in message and "row 4, attendance" in message
    assert "row 5, intake_date" in message
    for value in ("2024-13-45", "maybe", "1999-01-01", *frame[CLIENT_ID].astype(str)):
        assert value not in message
    # A missing column too (MLflow's own schema error would quote the whole input).
    with pytest.raises(MlflowException, match="frame, session_date: missing column") as info:
        loaded.predict(frame.drop(columns=["session_date"]))
    assert not [cid for cid in frame[CLIENT_ID].astype(str) if cid in info.value.message]


# -- 5b. mlflow models serve -------------------------------------------------------------------


@pytest.mark.integration
def test_mlflow_models_serve_scores_a_posted_raw_episode(logged: Logged, tmp_path: Path) -> None:
    model_dir = mlflow.artifacts.download_artifacts(
        logged.model_uri, dst_path=str(tmp_path / "model"), tracking_uri=logged.uri
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
        # --env-manager local starts uvicorn from PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        *_mlflow_command(), "models", "serve", "-m", model_dir, "--env-manager", "local",
        "-h", HOST, "-p", str(port), "--workers", "1",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"mlflow models serve exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"not up after 60 s:\n{_tail(log)}"
            try:
                with opener.open(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)

        def post(frame: pd.DataFrame) -> tuple[int, dict]:
            body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
            request = urllib.request.Request(
                f"{url}/invocations", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"}, method="POST",
            )  # fmt: skip
            try:
                with opener.open(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        frame = raw_frame(logged.cohort, n=2)
        status, doc = post(frame)
        assert status == 200, doc
        local = mlflow.pyfunc.load_model(model_dir).predict(frame)
        served = pd.DataFrame(doc["predictions"])
        assert served[CLIENT_ID].tolist() == local[CLIENT_ID].tolist()
        np.testing.assert_allclose(served["probability"], local["probability"], rtol=1e-9)
        assert served["risk_band"].tolist() == local["risk_band"].tolist()

        bad = frame.copy()
        bad.loc[1, "attendance"] = "maybe"
        status, doc = post(bad)
        assert status == 400
        assert "row 1, attendance" in doc["message"] and "maybe" not in doc["message"]
    finally:
        _stop(proc)


def test_a_partial_cohort_is_logged_with_the_whole_fingerprint_and_no_counts(
    logged: Logged,
) -> None:
    from training.runlog import _cohort_dataset

    # The Dask engine gathers only calibration and test clients; the fingerprint is the whole's.
    part = logged.cohort.clients.iloc[:10]
    sessions = logged.cohort.sessions[logged.cohort.sessions[CLIENT_ID].isin(part[CLIENT_ID])]
    whole = "ab" * 32
    dataset, tags = _cohort_dataset(
        sessions, part, "sessions.parquet, clients.parquet", whole, True
    )
    assert dataset.digest == whole[:36] and tags == {TAG_DATASET_FINGERPRINT: whole}
    assert "num_rows" not in json.dumps(dataset.to_dict())
    assert "client_id" in dataset.schema.input_names()
    with mlflow.start_run(
        experiment_id=logged.client.get_run(logged.train.run_id).info.experiment_id
    ) as run:
        mlflow.log_input(dataset, context="training", tags=tags)
    (stored,) = logged.client.get_run(run.info.run_id).inputs.dataset_inputs
    assert stored.dataset.digest == whole[:36]
    assert not [cid for cid in part[CLIENT_ID] if cid in json.dumps(stored.dataset.schema)]
