"""Through a real ``mlflow server`` with a PostgreSQL backend store on 127.0.0.1 (no mocks).

Logs a run with provenance tags, registers pyfunc models, promotes them through the gates
(refused when worse, accepted when better, forced with a reason) and loads
``models:/<name>@champion`` back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel

from tests.training.test_mlflow_analyst import raw_frame
from training.registry import CHAMPION_ALIAS, champion, evaluate_gates, promote, resolve_version
from training.scoring import score_tables
from training.tracking import (
    TAG_DATASET_FINGERPRINT,
    TAG_GIT_COMMIT,
    configure_mlflow,
    dataset_fingerprint,
    ensure_experiment,
    provenance_tags,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "alliance-risk-it"
INPUT = pd.DataFrame({"client_id": ["a", "b", "c"], "sessions_attended": [1.0, 2.0, 3.0]})
SUBGROUPS = pd.DataFrame(
    {
        "subgroup": ["gender", "gender"],
        "value": ["female", "male"],
        "n": [400, 350],
        "ece": [0.03, 0.04],
    }
)


# MLflow warns at class creation that predict has no type hints; the constant test model
# needs no hint-based input validation.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Add type hints", category=UserWarning)

    class ConstantModel(PythonModel):
        """The same probability for every row, so the output shows which version loaded."""

        def __init__(self, probability: float) -> None:
            self.probability = probability

        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"probability": np.full(len(model_input), self.probability)})


@pytest.fixture(scope="module")
def client(mlflow_server: str) -> Iterator[MlflowClient]:
    """Point MLflow at the server for this module, through the project's own configuration."""
    tracking_before, registry_before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    config = configure_mlflow(uri=mlflow_server)
    assert config.tracking_uri == mlflow_server
    assert config.artifact_location is None and not config.embedded
    yield MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    mlflow.set_tracking_uri(tracking_before)
    mlflow.set_registry_uri(registry_before)


def _log_constant(probability: float) -> str:
    """Log and register one constant model in the active run; returns its version."""
    output = ConstantModel(probability).predict(None, INPUT)
    info = mlflow.pyfunc.log_model(
        name=f"model-{round(probability * 100)}",
        python_model=ConstantModel(probability),
        signature=infer_signature(INPUT, output),
        input_example=INPUT,
        # Explicit requirements skip MLflow's slow dependency inference subprocess.
        pip_requirements=[f"mlflow=={mlflow.__version__}"],
        registered_model_name=MODEL_NAME,
    )
    return str(info.registered_model_version)


def _load_champion() -> float:
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}")
    out = loaded.predict(INPUT)
    assert len(out) == len(INPUT)
    values = set(np.asarray(out["probability"]).tolist())
    assert len(values) == 1
    return values.pop()


def test_run_is_tracked_with_provenance(client: MlflowClient) -> None:
    experiment_id = ensure_experiment("alliance-risk-it", client=client)
    assert ensure_experiment("alliance-risk-it", client=client) == experiment_id
    fingerprint = dataset_fingerprint(INPUT)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags(provenance_tags(fingerprint, "0" * 40))
        mlflow.log_params({"max_depth": 4, "calibration": "sigmoid"})
        mlflow.log_metrics({"test_auroc": 0.81, "test_ece": 0.02})
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.tags[TAG_DATASET_FINGERPRINT] == fingerprint
    assert stored.data.tags[TAG_GIT_COMMIT] == "0" * 40
    assert stored.data.params == {"max_depth": "4", "calibration": "sigmoid"}
    assert stored.data.metrics["test_auroc"] == pytest.approx(0.81)


def test_register_promote_through_gates_and_load_champion(client: MlflowClient) -> None:
    experiment_id = ensure_experiment("alliance-risk-it", client=client)
    with mlflow.start_run(experiment_id=experiment_id):
        first, worse, better = (_log_constant(p) for p in (0.2, 0.9, 0.3))
    assert str(resolve_version(client, MODEL_NAME, None).version) == better
    assert champion(client, MODEL_NAME) is None
    assert champion(client, "no-such-model") is None
    metrics = {first: {"auroc": 0.80, "ece": 0.02}, worse: {"auroc": 0.70, "ece": 0.08},
               better: {"auroc": 0.82, "ece": 0.02}}  # fmt: skip

    # No champion yet: the AUROC gate passes and says so.
    gate = evaluate_gates(metrics[first], None, SUBGROUPS)
    result = promote(client, MODEL_NAME, first, gate=gate, actor="it")
    assert result.promoted and result.previous_champion is None
    assert _load_champion() == pytest.approx(0.2)

    # A worse candidate, judged against the champion on the same rows, is refused.
    current = champion(client, MODEL_NAME)
    assert current is not None
    gate = evaluate_gates(metrics[worse], metrics[str(current.version)], SUBGROUPS)
    refused = promote(client, MODEL_NAME, worse, gate=gate, actor="it")
    assert not refused.promoted
    assert {c.name for c in refused.failed_checks} == {"auroc_drop", "ece"}
    assert str(champion(client, MODEL_NAME).version) == first  # type: ignore[union-attr]
    refused_tags = client.get_model_version(MODEL_NAME, worse).tags
    assert refused_tags["promotion.refused_at"] == refused.at
    assert {c["name"] for c in json.loads(refused_tags["promotion.failed_checks"])} == {
        "auroc_drop",
        "ece",
    }

    # A better one is accepted, and remembers whom it replaced.
    gate = evaluate_gates(metrics[better], metrics[first], SUBGROUPS)
    accepted = promote(client, MODEL_NAME, better, gate=gate, actor="it")
    assert accepted.promoted and accepted.previous_champion == first
    assert client.get_model_version(MODEL_NAME, better).tags["promotion.previous_champion"] == first
    assert _load_champion() == pytest.approx(0.3)

    # Forcing the worse one needs a reason, and the tags say who, when and why.
    gate = evaluate_gates(metrics[worse], metrics[better], SUBGROUPS)
    forced = promote(
        client, MODEL_NAME, worse, gate=gate, force=True, reason="pilot sign-off", actor="lead"
    )
    assert forced.promoted and forced.forced
    tags = client.get_model_version(MODEL_NAME, worse).tags
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.reason"] == "pilot sign-off"
    assert tags["promotion.actor"] == "lead"
    assert tags["promotion.at"] == forced.at
    assert tags["promotion.previous_champion"] == better
    assert _load_champion() == pytest.approx(0.9)


def test_cli_trains_registers_promotes_and_loads_through_the_server(
    client: MlflowClient, mlflow_server: str, tmp_path
) -> None:
    """The analysts' commands, end to end, against the real server and PostgreSQL store."""
    from typer.testing import CliRunner

    from cli.main import app
    from models.pyfunc import load_scorer
    from training.simulate import simulate_cohort, write_cohort

    cohort = simulate_cohort(600, seed=5)
    write_cohort(cohort, tmp_path)
    files = [
        "--sessions",
        str(tmp_path / "sessions.csv"),
        "--clients",
        str(tmp_path / "clients.csv"),
    ]
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    name = "alliance-risk-cli-it"

    def run(*args: str):
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result

    run("train", *files, "--register", name, "--experiment", "it-cli", "--trials", "1")
    run("promote", "--name", name, "--force", "--reason", "integration test cohort")
    mv = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    assert str(mv.version) == "1" and mv.tags["promotion.forced"] == "true"
    run_data = client.get_run(mv.run_id).data
    assert run_data.tags[TAG_DATASET_FINGERPRINT] and "test_auroc" in run_data.metrics
    artifacts = {a.path for a in client.list_artifacts(mv.run_id, "report")}
    assert any(p.endswith("model_card.md") for p in artifacts), artifacts

    # Through the server's artifact store: the logged model scores raw episodes as the scorer.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION_ALIAS}")
    scorer = load_scorer(f"models:/{name}@{CHAMPION_ALIAS}")
    frame = raw_frame(cohort, 3)
    out = pyfunc.predict(frame).set_index("client_id")
    ids = list(out.index)
    expected = score_tables(
        scorer, cohort.sessions[cohort.sessions["client_id"].isin(ids)],
        cohort.clients[cohort.clients["client_id"].isin(ids)], cohort.profile,
        model_name=name, model_version="1", include_ended=True,
    ).frame.set_index("client_id")  # fmt: skip
    np.testing.assert_allclose(out.loc[expected.index, "probability"], expected["probability"],
                               rtol=1e-12)  # fmt: skip

    scores = tmp_path / "scores.csv"
    run("score", "--model", f"models:/{name}@{CHAMPION_ALIAS}", *files, "--all", "--out",
        str(scores))  # fmt: skip
    assert len(pd.read_csv(scores)) == cohort.clients["client_id"].nunique()
