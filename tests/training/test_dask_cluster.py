"""Train and score through a real ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 (from .venv/bin), as a clinic network would run them across machines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dask.dataframe as dd
import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from features.contract import CLIENT_ID
from tests.conftest import HOST, _stop, _tail, free_port
from training.io import load_cohort
from training.scoring import score_cohort
from training.simulate import simulate_cohort
from training.tracking import configure_mlflow

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and two single-threaded workers, loopback only, no dashboard; all stopped
    at the end, also when the test fails."""
    from distributed import Client

    port = free_port()
    address = f"tcp://{HOST}:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "scheduler.log", tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    try:
        procs.append(_start([str(BIN / "dask"), "scheduler", "--host", HOST, "--port",
                             str(port), "--no-dashboard", "--dashboard-address",
                             f"{HOST}:{free_port()}"], logs[0]))  # fmt: skip
        for i in (1, 2):
            procs.append(_start([str(BIN / "dask"), "worker", address, "--nthreads", "1",
                                 "--host", HOST, "--no-dashboard", "--dashboard-address",
                                 f"{HOST}:0", "--local-directory",
                                 str(tmp_path / f"worker-{i}")], logs[i]))  # fmt: skip
        try:
            with Client(address, timeout="30s") as client:
                client.wait_for_workers(2, timeout=60)
        except (OSError, TimeoutError) as err:
            tails = "\n".join(f"--- {log.name}\n{_tail(log)}" for log in logs)
            raise AssertionError(f"dask cluster did not start ({err!r})\n{tails}") from None
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_train_and_score_through_a_real_scheduler_and_workers(
    cluster: str, mlflow_sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cohort = simulate_cohort(1500, seed=11)
    data = tmp_path / "data"
    dd.from_pandas(cohort.sessions, npartitions=2).to_parquet(data / "sessions",
                                                              write_index=False)  # fmt: skip
    dd.from_pandas(cohort.clients, npartitions=2).to_parquet(data / "clients", write_index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    configure_mlflow(project_root=tmp_path, uri=mlflow_sqlite_uri)
    args = ["--sessions", str(data / "sessions"), "--clients", str(data / "clients")]
    runner = CliRunner()

    trained = runner.invoke(app, ["train", *args, "--engine", "dask", "--scheduler", cluster,
                                  "--trials", "1"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    text = " ".join(trained.output.split())
    assert "registered alliance-risk version 1" in text
    assert "Gathered to the driver:" in text
    assert re.search(r"\d[\d,]* of [\d,]+ calibration clients", text)
    # The MLflow run's model card says how many held-out clients were used, and of how many.
    run_id = mlflow.MlflowClient().get_model_version("alliance-risk", "1").run_id
    card = mlflow.artifacts.load_text(f"runs:/{run_id}/report/model_card.md")
    assert re.search(
        r"gathered to the driver \(Dask engine\):\*\* calibration: [\d,]+ of [\d,]+ clients", card
    )
    assert "Drift reference profile:** features, score and bands: the gathered calibration" in card
    # The default --censoring ipcw and the cross-fitted calibration, as the card states them.
    flat = " ".join(card.split())
    assert "weighted by inverse probability of censoring (IPCW)" in flat
    assert "used in the booster fit and the calibration" in flat
    assert "out-of-fold margins of the train and validation clients" in flat
    assert re.search(
        r"Cross-fitted calibration \(Dask engine\):\*\* out-of-fold margins of [\d,]+ of "
        r"[\d,]+ train",
        flat,
    )
    assert re.search(
        r"Cross-fitted calibration, fold models' level:\*\* out-of-fold margins of 5 fold "
        r"models moved to the served booster's level on the calibration clients",
        flat,
    )

    out = tmp_path / "scores"
    scored = runner.invoke(app, ["score", *args, "--engine", "dask", "--scheduler", cluster,
                                 "--model", "models:/alliance-risk/1", "--out", str(out)])  # fmt: skip
    assert scored.exit_code == 0, scored.output
    assert len(list(out.glob("part.*.parquet"))) >= 2
    frame = pd.read_parquet(out).sort_values(CLIENT_ID, ignore_index=True)
    loaded = load_cohort(data / "sessions", data / "clients")
    want = score_cohort("models:/alliance-risk/1", loaded.sessions, loaded.clients,
                        loaded.profile).frame  # fmt: skip
    assert len(frame) == len(want) > 0
    assert (frame[CLIENT_ID].to_numpy(object) == want[CLIENT_ID].to_numpy(object)).all()
    np.testing.assert_array_equal(frame["probability"].to_numpy(), want["probability"].to_numpy())
