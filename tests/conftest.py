"""Shared fixtures.

The integration fixtures start real servers on 127.0.0.1 (no mocks, no docker): a private
PostgreSQL cluster in a temporary directory and an ``mlflow server`` using it as the backend
store. Tests that use them are marked ``integration`` automatically. When PostgreSQL cannot be
found or installed the fixtures fail with the reason; they never skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests send no traffic beyond 127.0.0.1, MLflow's usage telemetry included. Set before any test
# module imports mlflow, which reads these once.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

ROOT = Path(__file__).resolve().parents[1]
ENSURE_POSTGRES = ROOT / "scripts" / "ensure-postgres.sh"
INTEGRATION_FIXTURES = frozenset({"postgres_server", "mlflow_server"})
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 120.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (servers in tests bind loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _postgres_bin() -> Path:
    """Run scripts/ensure-postgres.sh (installs Debian's postgresql if needed as root)."""
    try:
        done = subprocess.run(
            ["bash", str(ENSURE_POSTGRES)], capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(
            f"PostgreSQL is required for integration tests: {ENSURE_POSTGRES} failed: {exc}"
        )
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(
            "PostgreSQL is required for integration tests and could not be found or installed "
            f"by {ENSURE_POSTGRES} (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def _postgres_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: ourselves, unless root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def _pg(
    bin_dir: Path, args: list[str], user: pwd.struct_passwd | None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(cwd)}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL on 127.0.0.1 with a free port and a database ``mlflow``.

    Yields a SQLAlchemy URL, ``postgresql+psycopg2://postgres@127.0.0.1:<port>/mlflow``
    (trust authentication: loopback only, throwaway cluster). Stopped and deleted at the end.
    """
    import psycopg2

    bin_dir = _postgres_bin()
    user = _postgres_user()
    # Not pytest's tmp_path: its parents are private to root, and the server may run as postgres.
    base = Path(tempfile.mkdtemp(prefix="alliance-risk-pg-"))
    data, log = base / "data", base / "postgres.log"
    started = False
    try:
        if user is not None:
            os.chown(base, user.pw_uid, user.pw_gid)
        initdb = ["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-locale"]
        init = _pg(bin_dir, [*initdb, "-E", "UTF8", "--no-sync"], user, base)
        if init.returncode != 0:
            pytest.fail(f"initdb failed (exit {init.returncode}):\n{init.stderr[-2000:]}")
        port = free_port()
        # Durability is irrelevant for a throwaway test cluster; skipping fsync makes it faster.
        options = (
            f"-c listen_addresses={HOST} -p {port} -k {base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start = _pg(
            bin_dir,
            ["pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            user,
            base,
        )
        if start.returncode != 0:
            pytest.fail(f"PostgreSQL did not start (exit {start.returncode}):\n{_tail(log)}")
        started = True
        conn = psycopg2.connect(host=HOST, port=port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE mlflow")
        finally:
            conn.close()
        yield f"postgresql+psycopg2://postgres@{HOST}:{port}/mlflow"
    finally:
        if started:
            _pg(bin_dir, ["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], user, base)
        shutil.rmtree(base, ignore_errors=True)


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    # No proxy: the server is on loopback, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode} on start:\n{_tail(log)}")
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it forwards to its uvicorn child), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_mlflow_server(backend_store_uri: str, workdir: Path) -> Iterator[tuple[str, Any]]:
    """``mlflow server`` (1 worker) on 127.0.0.1 over ``backend_store_uri``, artifacts under
    ``workdir``. Yields ``(url, stop)``: ``stop()`` ends it early (an outage); it is stopped at
    exit in any case."""
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # The job runner (huey consumers) is not needed to track runs and register models.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        *_mlflow_command(),
        "server",
        "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", artifacts.as_uri(),
        "--host", HOST,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url, lambda: _stop(proc)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` (1 worker) on 127.0.0.1 with the PostgreSQL backend store.

    Yields its URI, ``http://127.0.0.1:<port>``; artifacts go to a temporary directory.
    Terminated at the end of the session.
    """
    with running_mlflow_server(postgres_server, tmp_path_factory.mktemp("mlflow-server")) as (
        url,
        _,
    ):
        yield url


@pytest.fixture(scope="session")
def mlflow_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store whose schema is created once per session.

    Creating the schema runs MLflow's migrations, which takes seconds; copying the file takes
    milliseconds. Use :func:`mlflow_sqlite_uri`, or copy this file for a wider-scoped store.
    """
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-sqlite-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    # MLflow fixes the Default experiment's artifacts at ./mlruns of the folder the schema is
    # created from: created here, a run logged without an experiment stays out of the checkout.
    with contextlib.chdir(path.parent):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments()
        client.search_registered_models()
    return path


@pytest.fixture
def mlflow_sqlite_uri(tmp_path: Path, mlflow_sqlite_template: Path) -> str:
    """A fresh, real MLflow SQLite store (tracking and registry) for one test."""
    target = tmp_path / "mlflow-store" / "mlflow.db"
    target.parent.mkdir()
    shutil.copyfile(mlflow_sqlite_template, target)
    return f"sqlite:///{target}"
