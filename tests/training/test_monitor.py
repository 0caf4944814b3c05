"""alliance-risk monitor: simulated drift is flagged at the right clinic and feature group, no
drift rarely is, expected (CBPE) performance, realized metrics, and the CLI's report and run."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from features.episodes import Episodes
from training.metrics import auroc
from training.monitor import (
    OVERALL,
    NothingToJudgeError,
    expected_auroc,
    expected_brier,
    labels_of,
    monitor,
    outcomes_from_table,
    unmatched_outcomes,
)
from training.monitor_report import HTML_FILE, MONITOR_EXPERIMENT, PLOTS, write_report
from training.pipeline import TrainConfig, train_model
from training.simulate import SimulationConfig, simulate_cohort, write_cohort
from training.tracking import configure_mlflow

TINY = TrainConfig(n_trials=1, n_boot=20, seed=0)
CLINIC = "K02"
#: Seeds of the no-drift sweep (the README quotes its alert rate).
FALSE_ALARM_SEEDS = range(1000, 1020)


@pytest.fixture(scope="module")
def scorer():
    cohort = simulate_cohort(3000, seed=101)
    return train_model(cohort.sessions, cohort.clients, cohort.profile, TINY).scorer


def _monitor(scorer, config: SimulationConfig, seed: int, n: int = 2000, outcomes=None):
    new = simulate_cohort(n, seed=seed, config=config)
    episodes = Episodes.from_frames(new.sessions, new.clients, new.profile)
    return monitor(scorer, episodes, labels_of(episodes, outcomes))


SCENARIOS = {
    "ratings one point lower": (
        SimulationConfig(drift_clinic=CLINIC, rating_shift=-1.0),
        {"empathy", "acceptance", "trust", "goals", "collaboration", "communication"},
    ),
    "alliance6 to SRS from 2023": (
        SimulationConfig(drift_clinic=CLINIC, instrument_change="srs", drift_from=date(2023, 1, 1)),
        {"acceptance", "trust"},
    ),
    "more no-shows": (SimulationConfig(drift_clinic=CLINIC, noshow_log_odds=1.0), {"attendance"}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_simulated_drift_is_flagged_at_its_clinic_and_group(scorer, scenario: str) -> None:
    config, groups = SCENARIOS[scenario]
    result = _monitor(scorer, config, seed=5)
    at = {s.name: s for s in result.clinics}
    alerted = {g for g, d in at[CLINIC].drift.groups.items() if d.status == "alert"}
    assert groups <= alerted, (scenario, alerted)
    others = [(s.name, w) for s, w in result.alerts if s not in (CLINIC, OVERALL)]
    assert others == [], others
    assert result.status == "alert"


def test_no_drift_rarely_alerts_or_watches_over_seeds(scorer) -> None:
    flagged = []  # per run: (alerts, watches) over every slice's score and groups
    for seed in FALSE_ALARM_SEEDS:
        result = _monitor(scorer, SimulationConfig(), seed, n=1000)
        drifts = [d for s in (result.overall, *result.clinics) for d in _judged(s)]
        flagged.append(tuple(sum(d.status == s for d in drifts) for s in ("alert", "watch")))
    runs_alert = sum(a > 0 for a, _ in flagged) / len(flagged)
    runs_watch = sum(w > 0 for _, w in flagged) / len(flagged)
    print(f"no-drift runs with an alert {runs_alert:.2f}, with a watch {runs_watch:.2f}: {flagged}")
    # Against the pooled reference and counting rows, every run had a watch (clinics differ
    # through their therapists; a client's rows repeat its early ratings). Measured since the
    # clinic references grew to every development client: 0/20 alerts, 2/20 runs with a watch
    # (a watch is the weaker, chance-prone signal). The bound leaves one run of margin so that a
    # retuned simulator does not trip it, and still fails the 20/20 of the old rule.
    assert runs_alert <= 0.05 and runs_watch <= 0.15, flagged


def _judged(s):
    return (s.drift.score, *s.drift.groups.values())


def test_each_clinic_is_judged_on_its_clients_against_its_own_reference(scorer) -> None:
    own = set(scorer.reference.distribution["clinics"])
    assert own, "the training cohort should give some clinic a reference of its own"
    result = _monitor(scorer, SimulationConfig(), seed=7, n=1000)
    for s in result.clinics:
        assert s.drift.baseline == ("clinic" if s.name in own else "pooled")
        assert s.drift.n_clients == s.n_clients < s.n_rows
    assert result.overall.drift.baseline == "pooled"
    # too_few counts clients: a minimum above each clinic's clients but below its rows.
    new = simulate_cohort(1000, seed=7)
    episodes = Episodes.from_frames(new.sessions, new.clients, new.profile)
    most = max(s.n_clients for s in result.clinics)
    assert most + 1 <= min(s.n_rows for s in result.clinics)
    few = monitor(scorer, episodes, labels_of(episodes), min_clients=most + 1)
    assert all(s.status == "too_few" for s in few.clinics) and few.overall.status != "too_few"


def test_expected_auroc_is_the_pairwise_expectation() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.beta(2, 5, size=40), 2)  # ties included
    num = den = 0.0
    for i in range(p.size):
        for j in range(p.size):
            if i != j:
                w = p[i] * (1 - p[j])
                den += w
                num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_auroc(p) == pytest.approx(num / den, rel=1e-12)
    # Outcomes drawn from calibrated probabilities: realized AUROC and Brier centre on them.
    p = rng.beta(2, 5, size=2000)
    draws = [rng.random(p.size) < p for _ in range(200)]
    assert np.mean([auroc(y, p) for y in draws]) == pytest.approx(expected_auroc(p), abs=0.005)
    assert np.mean([np.mean((y - p) ** 2) for y in draws]) == pytest.approx(
        expected_brier(p), abs=0.002
    )
    assert np.isnan(expected_auroc(np.array([0.3]))) and np.isnan(expected_auroc(np.ones(5)))


def test_outcomes_that_arrive_later_give_realized_metrics(scorer) -> None:
    new = simulate_cohort(1500, seed=9)
    episodes = Episodes.from_frames(new.sessions, new.clients, new.profile)
    ongoing = new.clients.loc[new.clients["outcome"] == "ongoing", "client_id"]
    late = {cid: "dropout" for cid in ongoing[:5]}
    labels = labels_of(episodes, late)
    own = new.clients.set_index("client_id")["outcome"]
    for i, cid in enumerate(episodes.client_id):
        expect = late.get(cid, own[cid])
        want = {"dropout": 1.0, "completed": 0.0, "ongoing": np.nan}[expect]
        np.testing.assert_equal(labels[i], want)
    result = monitor(scorer, episodes, labels)
    r = result.overall.realized
    assert r is not None and 0.5 < r.auroc <= 1 and 0 <= r.ece < 0.2
    # Realized and expected on the same rows agree on this undrifted, calibrated cohort.
    assert abs(r.auroc - r.expected.auroc) < 0.08
    assert abs(r.dropout_rate - r.expected.dropout_rate) < 0.06
    assert result.overall.pending.n_rows + r.n_rows == result.overall.n_rows


def test_outcomes_of_unknown_clients_are_counted_and_never_named(scorer, tmp_path: Path) -> None:
    new = simulate_cohort(300, seed=12)
    episodes = Episodes.from_frames(new.sessions, new.clients, new.profile)
    late = {new.clients["client_id"].iloc[0]: "dropout", "NOT-A-CLIENT-7": "dropout"}
    assert unmatched_outcomes(episodes, late) == 1 and unmatched_outcomes(episodes, None) == 0
    result = monitor(scorer, episodes, labels_of(episodes, late), unmatched_outcomes=1)
    assert result.unmatched_outcomes == 1
    files = write_report(result, tmp_path / "r")
    page, doc = files["html"].read_text(), json.loads(files["json"].read_text())
    assert "1 later outcome(s) name a client that is not in the new data" in page
    assert doc["unmatched_outcomes"] == 1 and "NOT-A-CLIENT-7" not in page + json.dumps(doc)


def test_a_landmark_no_client_reached_is_nothing_to_judge(scorer) -> None:
    new = simulate_cohort(300, seed=13)
    episodes = Episodes.from_frames(new.sessions, new.clients, new.profile)
    with pytest.raises(NothingToJudgeError, match="appointment 60"):
        monitor(scorer, episodes, labels_of(episodes), landmark=60)


def test_an_outcomes_table_is_checked_and_errors_name_lines_not_values() -> None:
    good = pd.DataFrame({"client_id": ["a", "b"], "outcome": ["dropout", " Completed "]})
    assert outcomes_from_table(good) == {"a": "dropout", "b": "completed"}
    bad = pd.DataFrame(
        {"client_id": ["secret-1", "secret-1", ""], "outcome": ["x", "dropout", "ongoing"]}
    )
    with pytest.raises(ValueError, match="line 2") as err:
        outcomes_from_table(bad)
    assert "secret" not in str(err.value) and "line 4" in str(err.value)
    with pytest.raises(ValueError, match="lacks column"):
        outcomes_from_table(good[["client_id"]])


def test_the_report_is_self_contained_and_has_no_client_id(scorer, tmp_path: Path) -> None:
    config, _ = SCENARIOS["more no-shows"]
    new = simulate_cohort(1200, seed=11, config=config)
    episodes = Episodes.from_frames(new.sessions, new.clients, new.profile)
    files = write_report(monitor(scorer, episodes, labels_of(episodes)), tmp_path / "r")
    page = files["html"].read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert all((tmp_path / "r" / name).stat().st_size > 1000 for name in PLOTS)
    text = page + files["json"].read_text()
    assert not any(cid in text for cid in new.clients["client_id"])
    assert CLINIC in page
    assert json.loads(files["json"].read_text())["status"] == "alert"


@pytest.fixture
def store(mlflow_sqlite_uri, tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    configure_mlflow(project_root=tmp_path, uri=mlflow_sqlite_uri)
    return mlflow_sqlite_uri


def test_cli_writes_html_png_and_an_mlflow_run_and_exits_1_on_alert(store, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"MLFLOW_TRACKING_URI": store, "COLUMNS": "200"}
    train_data, new_data = tmp_path / "train", tmp_path / "new"
    write_cohort(simulate_cohort(900, seed=21), train_data)
    write_cohort(simulate_cohort(900, seed=22, config=SCENARIOS["more no-shows"][0]), new_data)

    def files(folder: Path) -> list[str]:
        return [
            "--sessions",
            str(folder / "sessions.csv"),
            "--clients",
            str(folder / "clients.csv"),
        ]

    trained = runner.invoke(app, ["train", *files(train_data), "--trials", "1"], env=env)
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "report"
    args = ["monitor", "--model", "models:/alliance-risk/1", *files(new_data), "--out", str(out)]
    done = runner.invoke(app, [*args, "--min-clients", "100"], env=env)
    assert done.exit_code == 1, done.output
    assert "alert" in done.output and CLINIC in done.output
    assert (out / HTML_FILE).exists() and all((out / p).exists() for p in PLOTS)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(MONITOR_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["model.version"] == "1" and run.data.tags["monitor.status"] == "alert"
    assert f"clinic/{CLINIC}/attendance_psi" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {f"report/{HTML_FILE}", *(f"report/{p}" for p in PLOTS)} <= logged
    # Unknown outcomes vocabulary: no report, exit 2, the value not echoed.
    outcomes = tmp_path / "outcomes.csv"
    pd.DataFrame({"client_id": ["C000001"], "outcome": ["left-secretly"]}).to_csv(
        outcomes, index=False
    )
    bad = runner.invoke(app, [*args, "--outcomes", str(outcomes)], env=env)
    assert bad.exit_code == 2 and "left-secretly" not in bad.output and "C000001" not in bad.output
    # Every outcome known (no pending row: no expected AUROC) and one of a client the clients
    # file lacks: counted, never named; "–", not "nan".
    ids = pd.read_csv(new_data / "clients.csv")["client_id"].tolist()
    pd.DataFrame(
        {"client_id": [*ids, "NOT-A-CLIENT-7"], "outcome": ["completed"] * (len(ids) + 1)}
    ).to_csv(outcomes, index=False)
    known = runner.invoke(
        app, [*args, "--outcomes", str(outcomes), "--min-clients", "100"], env=env
    )
    assert known.exit_code == 1, known.output
    assert "1 outcome(s) in --outcomes name a client that is not in --clients" in known.output
    assert "NOT-A-CLIENT-7" not in known.output and "nan" not in known.output
    # Nothing judged: exit 2, said plainly, never "No alert".
    few = runner.invoke(app, [*args, "--min-clients", "100000"], env=env)
    assert few.exit_code == 2 and "too few clients" in few.output, few.output
    assert "Nothing judged" in few.output and "No alert" not in few.output
    none = runner.invoke(app, [*args, "--landmark", "60"], env=env)
    assert none.exit_code == 2 and "Nothing to judge" in none.output, none.output
