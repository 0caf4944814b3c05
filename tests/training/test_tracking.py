"""Tracking store resolution, experiments on a real SQLite store, fingerprint and git commit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from models import store
from training import tracking
from training.tracking import (
    artifact_location,
    configure_mlflow,
    dataset_fingerprint,
    ensure_experiment,
    git_commit,
    project_root,
    provenance_tags,
    tracking_uri,
)

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = '[project]\nname = "alliance-risk"\nversion = "0"\n'


@pytest.fixture
def fake_project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "training" / "deep").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root


@pytest.fixture
def restore_mlflow_uris() -> Iterator[None]:
    tracking_before, registry_before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking_before)
    mlflow.set_registry_uri(registry_before)


def test_project_root_is_found_from_a_subdirectory(
    fake_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fake_project / "training" / "deep")
    assert project_root() == fake_project.resolve()


def test_project_root_ignores_other_projects_and_never_falls_back_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    monkeypatch.chdir(tmp_path)
    # Outside any checkout: the checkout this code runs from (the tests run from one).
    assert project_root() == ROOT
    assert project_root(tmp_path / "missing-sub") == (tmp_path / "missing-sub").resolve()


@pytest.fixture
def installed_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As if installed from a wheel (no checkout around the code); returns XDG_DATA_HOME."""
    site = tmp_path / "site-packages" / "models"
    site.mkdir(parents=True)
    monkeypatch.setattr(store, "_PACKAGE_DIR", site)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "xdg"


def test_outside_a_checkout_every_folder_gets_the_same_per_user_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed_wheel: Path
) -> None:
    seen = set()
    for folder in ("x", "y/deeper"):
        (tmp_path / folder).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / folder)
        seen.add((project_root(), tracking_uri()))
    assert seen == {
        (
            installed_wheel / "alliance-risk",
            f"sqlite:///{installed_wheel}/alliance-risk/.mlflow/mlflow.db",
        )
    }
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.user_data_dir() == tmp_path / "home" / ".local" / "share" / "alliance-risk"


@pytest.mark.slow
def test_train_in_one_folder_and_score_from_another_finds_the_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    installed_wheel: Path,
    mlflow_sqlite_template: Path,
    restore_mlflow_uris: None,
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    embedded = installed_wheel / "alliance-risk" / ".mlflow" / "mlflow.db"
    embedded.parent.mkdir(parents=True)
    shutil.copyfile(mlflow_sqlite_template, embedded)  # skips MLflow's schema migrations

    def run(folder: str, *args: str) -> str:
        # A new process starts without it; mlflow.set_tracking_uri exports it to this one.
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / folder)
        done = CliRunner().invoke(app, list(args))
        assert done.exit_code == 0, done.output
        return done.output

    run("x", "simulate", "--out", "data", "--clients", "300")
    data = ["--sessions", "data/sessions.csv", "--clients", "data/clients.csv"]
    run("x", "train", *data, "--trials", "1")
    # 300 clients are too few to pass the calibration gates; the point here is the folders.
    run("x", "promote", "--force", "--reason", "test of the project folders")
    data = [arg.replace("data/", "../x/data/") for arg in data]
    out = run("y", "score", *data, "--out", "scores.csv")
    assert "with alliance-risk v1" in out
    assert not (tmp_path / "x" / ".mlflow").exists() and not (tmp_path / "y" / ".mlflow").exists()


def test_tracking_uri_defaults_to_sqlite_under_the_project(
    fake_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(fake_project)
    assert uri == f"sqlite:///{fake_project.resolve() / '.mlflow' / 'mlflow.db'}"
    # An absolute SQLite path has four slashes after the scheme.
    assert uri.startswith("sqlite:////")
    assert artifact_location(fake_project) == (fake_project / ".mlflow" / "artifacts").as_uri()


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_tracking_uri_env_means_default(
    fake_project: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    assert tracking_uri(fake_project).startswith("sqlite:////")


def test_tracking_uri_env_overrides(fake_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(fake_project) == "http://127.0.0.1:5999"


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import mlflow, os; before = mlflow.get_tracking_uri(); import training.tracking; "
        "assert mlflow.get_tracking_uri() == before; assert not os.path.exists('.mlflow')"
    )
    env = {
        "PYTHONPATH": str(Path(tracking.__file__).resolve().parents[1]),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_configure_creates_the_store_and_sets_both_uris(
    fake_project: Path, monkeypatch: pytest.MonkeyPatch, restore_mlflow_uris: None
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = configure_mlflow(fake_project)
    assert config.embedded
    assert (fake_project / ".mlflow" / "artifacts").is_dir()
    assert mlflow.get_tracking_uri() == config.tracking_uri == tracking_uri(fake_project)
    assert mlflow.get_registry_uri() == config.tracking_uri
    assert config.artifact_location == artifact_location(fake_project)


def test_configure_with_a_server_uri_creates_nothing(
    fake_project: Path, monkeypatch: pytest.MonkeyPatch, restore_mlflow_uris: None
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    config = configure_mlflow(fake_project)
    assert not config.embedded
    assert config.artifact_location is None
    assert not (fake_project / ".mlflow").exists()
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:5999"


def test_ensure_experiment_is_idempotent_and_uses_the_project_artifacts(
    fake_project: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_mlflow_uris: None,
    mlflow_sqlite_template: Path,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The embedded store's own path, pre-migrated to save seconds.
    (fake_project / ".mlflow").mkdir()
    shutil.copyfile(mlflow_sqlite_template, fake_project / ".mlflow" / "mlflow.db")
    configure_mlflow(fake_project)
    client = MlflowClient()
    first = ensure_experiment("dropout", client=client, project_root=fake_project)
    assert ensure_experiment("dropout", client=client, project_root=fake_project) == first
    experiment = client.get_experiment(first)
    assert experiment.artifact_location == artifact_location(fake_project)

    client.delete_experiment(first)
    assert ensure_experiment("dropout", client=client, project_root=fake_project) == first
    assert client.get_experiment(first).lifecycle_stage == "active"

    with pytest.raises(ValueError, match="must not be empty"):
        ensure_experiment("  ", client=client)


# --------------------------------------------------------------------------- fingerprint


def _sessions(seed: int = 0, n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "client_id": [f"c{i % 7}" for i in range(n)],
            "session_number": np.arange(n) % 5 + 1,
            "session_date": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), "D"),
            "alliance_trust": rng.uniform(0, 10, n).round(1),
            "attendance": rng.choice(["attended", "no_show"], n),
        }
    )


def test_fingerprint_is_sha256_hex_and_stable() -> None:
    fp = dataset_fingerprint(_sessions())
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert dataset_fingerprint(_sessions()) == fp


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_fingerprint_ignores_row_order_column_order_and_index(rnd: object) -> None:
    frame = _sessions()
    rows = list(range(len(frame)))
    rnd.shuffle(rows)  # type: ignore[attr-defined]
    cols = list(frame.columns)
    rnd.shuffle(cols)  # type: ignore[attr-defined]
    shuffled = frame.iloc[rows][cols]
    assert dataset_fingerprint(shuffled) == dataset_fingerprint(frame)
    assert dataset_fingerprint(shuffled.reset_index(drop=True)) == dataset_fingerprint(frame)


@settings(max_examples=30, deadline=None)
@given(row=st.integers(0, 29), delta=st.sampled_from([0.1, -0.1, 1.0]))
def test_fingerprint_changes_when_one_value_changes(row: int, delta: float) -> None:
    frame = _sessions()
    changed = frame.copy()
    changed.loc[row, "alliance_trust"] = frame.loc[row, "alliance_trust"] + delta
    assert dataset_fingerprint(changed) != dataset_fingerprint(frame)


def test_fingerprint_counts_duplicates_and_frame_order() -> None:
    sessions = _sessions()
    clients = pd.DataFrame({"client_id": ["c0", "c1"], "outcome": ["dropout", "completed"]})
    doubled = pd.concat([sessions, sessions.iloc[[0]]])
    assert dataset_fingerprint(doubled) != dataset_fingerprint(sessions)
    assert dataset_fingerprint(sessions, clients) != dataset_fingerprint(clients, sessions)
    assert dataset_fingerprint(sessions, clients) != dataset_fingerprint(sessions)
    assert dataset_fingerprint(sessions.iloc[:0]) != dataset_fingerprint(sessions.iloc[:0, :2])


def test_fingerprint_rejects_no_frames_and_non_frames() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        dataset_fingerprint()
    with pytest.raises(TypeError, match="argument 1 is a list"):
        dataset_fingerprint(_sessions(), [1, 2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- git


def test_git_commit_is_none_outside_a_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None


def test_git_commit_is_none_before_the_first_commit(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(tmp_path) is None


def test_git_commit_reads_head(tmp_path: Path) -> None:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", *identity, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(tmp_path) == head
    assert re.fullmatch(r"[0-9a-f]{40}", head)


def test_git_commit_survives_missing_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert git_commit(tmp_path) is None


def test_provenance_tags() -> None:
    assert provenance_tags("ab" * 32, None) == {"dataset.fingerprint": "ab" * 32}
    tags = provenance_tags("ab" * 32, "c" * 40)
    assert tags["mlflow.source.git.commit"] == "c" * 40


# --------------------------------------------------------------------------- artifact location


def test_experiment_artifacts_follow_an_sqlite_store_not_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str
) -> None:
    # Run from inside the checkout, as the tests do: artifacts must still go beside the store.
    monkeypatch.chdir(ROOT)
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    experiment = client.get_experiment(ensure_experiment("beside-the-store", client=client))
    store_dir = Path(mlflow_sqlite_uri.removeprefix("sqlite:///")).parent
    assert experiment.artifact_location == (store_dir / "artifacts").as_uri()
    assert not experiment.artifact_location.startswith(ROOT.as_uri())


def test_store_artifact_location_by_kind_of_store(
    tmp_path: Path, fake_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = tracking.store_artifact_location("sqlite:///stores/a/mlflow.db", fake_project)
    assert relative == (tmp_path / "stores" / "a" / "artifacts").resolve().as_uri()
    assert tracking.store_artifact_location("http://127.0.0.1:5999") is None
    assert tracking.store_artifact_location(f"file://{tmp_path}/mlruns") is None
    for uri in ("postgresql+psycopg2://u@127.0.0.1:5432/mlflow", "sqlite:///:memory:"):
        assert tracking.store_artifact_location(uri, fake_project) == artifact_location(
            fake_project
        )


def test_configure_reports_the_artifacts_beside_an_sqlite_override(
    tmp_path: Path, fake_project: Path, restore_mlflow_uris: None
) -> None:
    uri = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    config = configure_mlflow(fake_project, uri=uri)
    assert config.artifact_location == (tmp_path / "other" / "artifacts").as_uri()
    assert not (fake_project / ".mlflow").exists()


def test_test_stores_keep_even_the_default_experiment_out_of_the_checkout(
    mlflow_sqlite_uri: str,
) -> None:
    # A run logged without an experiment (tests/service/faults.py) goes to experiment 0, whose
    # artifact folder MLflow fixes when the schema is created.
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    location = client.get_experiment("0").artifact_location
    assert not location.startswith((str(ROOT), ROOT.as_uri()))
