"""A real tiny model in a real MLflow SQLite registry, shared by the service tests."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from training.pipeline import TrainConfig, train_model
from training.runlog import log_training_run
from training.simulate import Cohort, simulate_cohort
from training.tracking import configure_mlflow

MODEL_NAME = "alliance-risk-svc"
#: Every request body in the service tests belongs to this clinic (clinic is not a feature).
TEST_CLINIC = "clinic-test"
ALL_SCOPES = ("risk:read", "risk:batch", "model:read", "model:admin", "clients:read",
              "clients:write")  # fmt: skip


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        self.lines.append(f"{record.name} {record.getMessage()} {fields!r} {record.exc_text or ''}")


@pytest.fixture(scope="session", autouse=True)
def no_client_data_in_logs() -> Iterator[None]:
    """All in-process log records of the service tests, at DEBUG, scanned at the end for every
    client id the tests sent (plus the marker rating the log test uses): none may appear."""
    from tests.service.helpers import SENT_CLIENT_IDS

    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    levels = {n: logging.getLogger(n).level for n in ("service", "uvicorn", "mlflow")}
    logging.getLogger("service").setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(capture)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    text = "\n".join(capture.lines)
    if any("service started" in line for line in capture.lines):
        # An app served in this session: its access lines must have been captured too, or the
        # scan below would prove nothing.
        assert any("request" in line for line in capture.lines), "no access lines captured"
    leaked = sorted(cid for cid in SENT_CLIENT_IDS if cid in text)
    assert not leaked, f"{len(leaked)} client ids appear in the logs"
    assert "7.3579" not in text


@pytest.fixture(scope="session")
def dev_key_dir(tmp_path_factory) -> Path:
    """One dev signing key pair for the whole session (dev mode: tokens minted locally)."""
    return tmp_path_factory.mktemp("dev-keys") / "keys"


def security_settings(key_dir: Path, audit_dir: Path, **limits) -> dict:
    """create_app keyword arguments: dev-mode auth, an audit file in ``audit_dir``, and no rate
    limits unless ``limits`` set some."""
    from service.audit_log import AuditSettings
    from service.auth import AuthSettings
    from service.limits import LimitSettings

    audit_dir.mkdir(parents=True, exist_ok=True)
    return {
        "auth": AuthSettings(mode="dev", dev_key_dir=key_dir),
        "limits": LimitSettings(
            **{"rate_per_clinic_per_s": 0, "rate_per_token_per_s": 0, **limits}
        ),
        "audit": AuditSettings(path=audit_dir / "audit.jsonl", key_file=audit_dir / "audit.key"),
    }


def bearer(key_dir: Path, clinic: str = TEST_CLINIC, scopes=ALL_SCOPES) -> dict[str, str]:
    from service.auth import mint_dev_token

    return {"Authorization": f"Bearer {mint_dev_token(clinic, scopes, key_dir=key_dir)}"}


@dataclass(frozen=True)
class Registry:
    """A SQLite MLflow store holding ``MODEL_NAME`` versions 1 (champion) and 2 (unpromoted)."""

    uri: str
    root: Path
    cohort: Cohort


def _log(result, cohort: Cohort) -> str:
    test = cohort.clients["client_id"].isin(result.splits.test)
    logged, _ = log_training_run(
        result,
        sessions=cohort.sessions,
        clients=cohort.clients,
        test_sessions=cohort.sessions[cohort.sessions["client_id"].isin(result.splits.test)],
        test_clients=cohort.clients[test],
        experiment="service-tests",
        register_as=MODEL_NAME,
        simulated=True,
    )
    return str(logged.model_version)


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory, mlflow_sqlite_template: Path) -> Registry:
    """Trained once per session: two versions of a tiny model (different seeds)."""
    root = tmp_path_factory.mktemp("svc-registry")
    db = root / ".mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(mlflow_sqlite_template, db)
    uri = f"sqlite:///{db}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    configure_mlflow(project_root=root, uri=uri)
    try:
        cohort = simulate_cohort(700, seed=41)
        for seed in (0, 1):
            result = train_model(
                cohort.sessions, cohort.clients, cohort.profile,
                TrainConfig(n_trials=1, n_boot=0, seed=seed),
            )  # fmt: skip
            _log(result, cohort)
        MlflowClient(uri, uri).set_registered_model_alias(MODEL_NAME, "champion", "1")
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    return Registry(uri=uri, root=root, cohort=cohort)


@pytest.fixture
def registry(registry_template: Registry, tmp_path: Path) -> Iterator[Registry]:
    """A private copy of the template registry (tests move aliases freely)."""
    root = tmp_path / "registry"
    shutil.copytree(registry_template.root, root)
    db = root / ".mlflow" / "mlflow.db"
    # Artifact locations in the store are absolute paths into the template, which stays put.
    yield Registry(uri=f"sqlite:///{db}", root=root, cohort=registry_template.cohort)


@pytest.fixture
def api(registry: Registry, dev_key_dir: Path) -> Iterator[TestClient]:
    """The app on a private registry's champion, dev authentication, every scope by default (a
    request's own ``Authorization`` header overrides it); its audit file in the registry's root."""
    from service.app import create_app
    from service.settings import ServiceSettings

    # The client store in the test's folder: never the checkout's .alliance-risk/store.db (the
    # app migrates it, and rescores its open episodes with the test's model).
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        store_url=f"sqlite:///{registry.root / 'store.db'}",
    )  # fmt: skip
    app = create_app(settings, configure_logs=False,
                     **security_settings(dev_key_dir, registry.root / "audit"))  # fmt: skip
    with TestClient(app, headers=bearer(dev_key_dir)) as client:
        yield client


@pytest.fixture
def pg_store_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for the client store on the session's PostgreSQL, dropped after."""
    import uuid

    from sqlalchemy import create_engine

    name = f"store_{uuid.uuid4().hex[:12]}"
    server = postgres_server.rsplit("/", 1)[0]
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
