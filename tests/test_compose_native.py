"""docker-compose.yml's stack started natively on 127.0.0.1 (there is no Docker engine here, and
container networks use private address ranges that tests must never target).

Everything a service runs is read from docker-compose.yml and the Dockerfile, not copied: its
entrypoint and command, environment (interpolated from this test's secrets), user, volumes,
``depends_on`` conditions (started in that order) and healthcheck command. The translation to
one machine is only this:

- each named volume and the project's bind-mounted folders are temporary folders, and a
  container path in a command or variable is replaced by its folder;
- a service's host name (``mlflow:5000``) and its own listening port become ``127.0.0.1`` with a
  free port, and ``0.0.0.0`` becomes ``127.0.0.1``; ``--allowed-hosts`` is kept as written (it
  filters Host headers, it binds nothing), and is checked with the Host header the stack sends;
- ``/usr/local/bin/<script>`` is ``scripts/<script>`` (the Dockerfile copies it there), and
  ``alliance-risk``, ``mlflow`` and ``python`` are this venv's;
- ``postgres:16`` runs from Debian's PostgreSQL binaries, set up as the image's entrypoint does
  for the compose file's POSTGRES_* variables (superuser and database ``mlflow``, password
  authentication over TCP).

Users: run as root (as CI does), init-volumes runs as root, as the file says, and hands the
folders to the image's ``app`` uid from the Dockerfile (10001). Each other service runs as that
uid when it can execute this venv's interpreter; where it cannot (here the interpreter lives
under /root, mode 0700), the services run as root, and that uid's access is checked with system
tools instead: it can write in every volume a service writes to, and read the API keys file
(mode 0400, its own). Run as another user, every service runs as that user and init-volumes
hands the folders to it; users are then not checked.

Not checked here (only a Docker host shows them): the image build, the container network and
its DNS, Docker's copy of a mount point's owner into a new volume, published ports, restart
policies and the real ``postgres:16`` image.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import HOST, _pg, _postgres_bin, _postgres_user, _tail, free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
#: The operator's secrets and choices, as a .env would hold them (no real secret).
SECRETS = {
    "POSTGRES_PASSWORD": "compose-native-test-pw",
    "ALLIANCE_RISK_AUTH_MODE": "api_key",
    "ALLIANCE_RISK_AUDIT_KEY": "5e" * 32,
    # A small demo cohort keeps the trainer to seconds (the stack's default is 10,000).
    "ALLIANCE_RISK_DEMO_CLIENTS": "600",
}
#: Ports the services listen on inside their containers, when no `ports:` entry says it.
IMAGE_PORTS = {"postgres": 5432, "mlflow": 5000}
STACK_TIMEOUT_S = 150.0
NAME_FILTER = "name='alliance-risk'"

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` (refused when unset)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(one, value)


def _dockerfile() -> tuple[list[str], int, set[str]]:
    """The image's ENTRYPOINT, its non-root user's uid and the scripts it copies to bin."""
    text = DOCKERFILE.read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)
    uid = re.search(r"useradd [^\n]*--uid (\d+)", text)
    copied = re.search(r"^COPY (scripts/(?:.|\\\n)*?)/usr/local/bin/$", text, re.MULTILINE)
    assert entry and uid and copied, "Dockerfile: ENTRYPOINT, useradd --uid, COPY of scripts"
    scripts = {Path(p).name for p in copied.group(1).replace("\\\n", " ").split()}
    return json.loads(entry.group(1)), int(uid.group(1)), scripts


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    uid: int
    gid: int
    mounts: dict[str, Path] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


class NativeStack:
    """The compose file's services as processes on 127.0.0.1, folders for volumes."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.compose = yaml.safe_load(COMPOSE_FILE.read_text())
        self.entrypoint, self.app_uid, self.image_scripts = _dockerfile()
        self.root = os.geteuid() == 0
        #: The non-root services really run as the image's uid (see the module's docstring).
        self.as_app = self.root and _can_run_python_as(self.app_uid)
        self.env = {**SECRETS}
        self.ports: dict[tuple[str, int], int] = {}
        self.services: dict[str, Service] = {}
        self.healthy: set[str] = set()
        self.pg_bin = _postgres_bin()
        (base / "logs").mkdir()
        self.home = base / "home"
        self.home.mkdir()
        # The image's WORKDIR /app: empty and owned by root.
        self.workdir = base / "app"
        self.workdir.mkdir()
        self.project = base / "project"  # where `docker compose up` runs: ./keys and such
        self.project.mkdir()
        for name, spec in self.compose["services"].items():
            user = spec.get("user")
            if not self.root:
                uid, gid = os.geteuid(), os.getegid()
            elif user == "root":
                uid = gid = 0
            else:
                assert user is None, f"{name}: user {user!r} (the test knows root and the image's)"
                uid = gid = self.app_uid if self.as_app else 0
            service = Service(name, spec, uid, gid)
            for entry in spec.get("volumes", []):
                source, target = interpolate(entry, self.env).split(":")[:2]
                if source.startswith(("./", "/")):
                    host = self.project / source if source.startswith("./") else Path(source)
                else:
                    host = base / "volumes" / source
                host.mkdir(parents=True, exist_ok=True)  # as Docker does for both
                service.mounts[target] = host
            for port in spec.get("ports", []):
                inside = int(str(port).rsplit(":", 1)[1].split("/")[0])
                self.ports[(name, inside)] = free_port()
            if name in IMAGE_PORTS:
                self.ports[(name, IMAGE_PORTS[name])] = free_port()
            self.services[name] = service
        if self.root:
            os.chown(self.home, self.app_uid, self.app_uid)
        # Folders a non-root service must reach: the temporary base itself.
        base.chmod(0o755)

    # --- translation -------------------------------------------------------------------------

    def translate(self, service: Service, text: str) -> str:
        if text.startswith("--allowed-hosts"):
            return text
        for (name, inside), port in self.ports.items():
            text = text.replace(f"{name}:{inside}", f"{HOST}:{port}")
            if name == service.name:
                text = text.replace(f"127.0.0.1:{inside}", f"{HOST}:{port}")
                text = text.replace(f"--port={inside}", f"--port={port}")
        text = text.replace("0.0.0.0", HOST)
        for target in sorted(service.mounts, key=len, reverse=True):
            pattern = r"(?<![\w/.-])" + re.escape(target) + r"(?![\w.-])"
            text = re.sub(pattern, str(service.mounts[target]), text)
        if text.startswith("/usr/local/bin/"):
            script = Path(text).name
            assert script in self.image_scripts, f"the Dockerfile does not copy {script}"
            return str(ROOT / "scripts" / script)
        if not self.root and service.name == "init-volumes":
            text = text.replace(f"{self.app_uid}:{self.app_uid}", f"{os.geteuid()}:{os.getegid()}")
        return text

    def executable(self, word: str) -> str:
        if word in {"alliance-risk", "mlflow", "python"}:
            return str(VENV_BIN / word)
        if word == "pg_isready":
            return str(self.pg_bin / word)
        return word

    def argv(self, service: Service) -> list[str]:
        spec = service.spec
        entry = spec.get("entrypoint", self.entrypoint)
        words = [*entry, *spec.get("command", [])]
        words = [self.translate(service, interpolate(str(w), self.env)) for w in words]
        return [self.executable(words[0]), *words[1:]]

    def environ(self, service: Service) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin:/bin",
            "HOME": str(self.home) if service.uid != 0 else os.environ.get("HOME", "/root"),
            "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1",  # the image's ENV
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in (service.spec.get("environment") or {}).items():
            env[key] = self.translate(service, interpolate(str(value), self.env))
        return env

    # --- processes ---------------------------------------------------------------------------

    def start(self, name: str) -> None:
        service = self.services[name]
        for dep, cond in (service.spec.get("depends_on") or {}).items():
            condition = cond["condition"]
            if condition == "service_healthy":
                self.wait_healthy(dep)
            elif condition == "service_completed_successfully":
                self.wait_completed(dep)
            else:
                pytest.fail(f"{name}: depends_on {dep} without a condition the test knows")
        if name == "postgres":
            self.start_postgres(service)
            return
        service.log = self.base / "logs" / f"{name}.log"
        with service.log.open("wb") as log:
            service.proc = subprocess.Popen(
                self.argv(service),
                cwd=self.workdir,
                env=self.environ(service),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=service.uid if self.root else None,
                group=service.gid if self.root else None,
                extra_groups=[] if self.root else None,
            )

    def run_again(self, name: str) -> subprocess.CompletedProcess[str]:
        """A one-shot service run once more, as ``docker compose up`` does on every start."""
        service = self.services[name]
        return subprocess.run(
            self.argv(service), cwd=self.workdir, env=self.environ(service),
            capture_output=True, text=True, timeout=STACK_TIMEOUT_S,
            user=service.uid if self.root else None, group=service.gid if self.root else None,
            extra_groups=[] if self.root else None,
        )  # fmt: skip

    def start_postgres(self, service: Service) -> None:
        """What the postgres image's entrypoint does with POSTGRES_USER/PASSWORD/DB."""
        import psycopg2

        env = {k: interpolate(str(v), self.env) for k, v in service.spec["environment"].items()}
        user = _postgres_user()
        pg = self.base / "pg"
        pg.mkdir()
        (pg / "pwfile").write_text(env["POSTGRES_PASSWORD"] + "\n")
        if user is not None:
            shutil.chown(pg, user.pw_uid, user.pw_gid)
            shutil.chown(pg / "pwfile", user.pw_uid, user.pw_gid)
        data = pg / "data"
        initdb = ["initdb", "-D", str(data), "-U", env["POSTGRES_USER"], "--no-locale", "-E"]
        initdb += ["UTF8", "--no-sync", f"--pwfile={pg / 'pwfile'}"]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256"]
        done = _pg(self.pg_bin, initdb, user, pg)
        assert done.returncode == 0, done.stderr[-2000:]
        self.pg_data, self.pg_user = data, user
        port = self.ports[("postgres", IMAGE_PORTS["postgres"])]
        options = f"-c listen_addresses={HOST} -p {port} -k {pg} -c fsync=off"
        log = pg / "postgres.log"
        start = ["pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]
        done = _pg(self.pg_bin, start, user, pg)
        assert done.returncode == 0, _tail(log)
        # Over TCP with the password: what the image's clients do.
        conn = psycopg2.connect(
            host=HOST, port=port, user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"],
            dbname="postgres",
        )  # fmt: skip
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{env["POSTGRES_DB"]}"')
        finally:
            conn.close()

    def healthcheck(self, name: str) -> bool:
        service = self.services[name]
        test = service.spec["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: healthcheck {test[0]} (the test runs CMD forms)"
        words = [self.translate(service, w) for w in test[1:]]
        argv = [self.executable(words[0]), *words[1:]]
        if name == "postgres":  # the container's default socket is this cluster's folder
            argv += ["-h", str(self.base / "pg"), "-p", str(self.ports[("postgres", 5432)])]
        done = subprocess.run(argv, capture_output=True, timeout=30, env=self.environ(service))
        return done.returncode == 0

    def wait_healthy(self, name: str) -> None:
        if name in self.healthy:
            return
        service = self.services[name]
        deadline = time.monotonic() + STACK_TIMEOUT_S
        while time.monotonic() < deadline:
            if service.proc is not None and service.proc.poll() is not None:
                pytest.fail(f"{name} exited with {service.proc.returncode}:\n{self.tail(name)}")
            if self.healthcheck(name):
                self.healthy.add(name)
                return
            time.sleep(0.5)
        pytest.fail(f"{name} not healthy after {STACK_TIMEOUT_S:.0f} s:\n{self.tail(name)}")

    def wait_completed(self, name: str) -> None:
        proc = self.services[name].proc
        assert proc is not None, f"{name} was never started"
        try:
            code = proc.wait(timeout=STACK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {STACK_TIMEOUT_S:.0f} s:\n{self.tail(name)}")
        assert code == 0, f"{name} exited with {code}:\n{self.tail(name)}"

    def tail(self, name: str) -> str:
        log = self.services[name].log
        return _tail(log) if log else "(no log)"

    def order(self) -> list[str]:
        """Services in an order that starts each after its dependencies."""
        done: list[str] = []

        def visit(name: str) -> None:
            if name not in done:
                for dep in self.services[name].spec.get("depends_on") or {}:
                    visit(dep)
                done.append(name)

        for name in self.services:
            visit(name)
        return done

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            proc = service.proc
            if proc is None or proc.poll() is not None:
                continue
            for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait_s)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "pg_data", None) is not None:
            stop = ["pg_ctl", "-D", str(self.pg_data), "-m", "fast", "-w", "stop"]
            _pg(self.pg_bin, stop, self.pg_user, self.base / "pg")


def _can_run_python_as(uid: int) -> bool:
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import service"], user=uid, group=uid, extra_groups=[],
            capture_output=True, timeout=60, cwd="/",
        )  # fmt: skip
    except PermissionError:
        return False
    return done.returncode == 0


def _as_uid(uid: int, *argv: str) -> int:
    """Exit code of a system tool run as ``uid``."""
    return subprocess.run(argv, user=uid, group=uid, extra_groups=[], timeout=30).returncode


def _clinic_export(folder: Path, *, seed: int) -> None:
    """A cohort in ``folder`` shaped as a clinic's export: no simulation marker."""
    subprocess.run(
        [str(VENV_BIN / "alliance-risk"), "simulate", "--clients",
         SECRETS["ALLIANCE_RISK_DEMO_CLIENTS"], "--seed", str(seed), "--out", str(folder)],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    (folder / "simulation.json").unlink()


def _versions(mlflow_port: int) -> int:
    path = f"/api/2.0/mlflow/model-versions/search?filter={quote(NAME_FILTER)}"
    status, body = _request(mlflow_port, "GET", path, {"Host": "mlflow:5000"})
    assert status == 200, body[:300]
    return len(json.loads(body)["model_versions"])


def _request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    assert match
    return int(match.group(1))


@pytest.fixture
def stack() -> Iterator[NativeStack]:
    # Not pytest's tmp_path: its parents are private to root, and the services run as app.
    base = Path(tempfile.mkdtemp(prefix="alliance-risk-compose-"))
    native = None
    try:
        native = NativeStack(base)
        yield native
    finally:
        if native is not None:
            native.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_the_compose_stack_starts_natively_and_scores_one_request(stack: NativeStack) -> None:
    from service.schemas import RISK_REQUEST_EXAMPLE

    # The operator, on the host: one API key for the example's clinic, in ./keys.
    keys_in = stack.services["init-volumes"].mounts["/keys-in"]
    created = subprocess.run(
        [str(VENV_BIN / "alliance-risk"), "apikey", "create", "--clinic",
         str(RISK_REQUEST_EXAMPLE["clinic_id"]), "--scope", "risk:read", "--name", "ehr-test",
         "--keys-file", str(keys_in / "api-keys.json")],
        capture_output=True, text=True, timeout=60, check=True, cwd=stack.base,
    )  # fmt: skip
    api_key = created.stdout.strip()

    started = time.monotonic()
    for name in stack.order():
        stack.start(name)
    stack.wait_healthy("api")
    elapsed = time.monotonic() - started

    # The MLflow server answers the Host header the API and trainer send inside the stack,
    # and still refuses others (the allowed hosts are a list, not '*').
    mlflow_port = stack.ports[("mlflow", 5000)]
    search = "/api/2.0/mlflow/registered-models/search?max_results=5"
    status, body = _request(mlflow_port, "GET", search, {"Host": "mlflow:5000"})
    assert status == 200, body[:300]
    assert b"alliance-risk" in body  # the trainer registered the model
    status, _ = _request(mlflow_port, "GET", search, {"Host": "elsewhere.example:5000"})
    assert status == 403

    status, body = _request(
        stack.ports[("api", 8000)], "POST", "/v1/risk",
        {"X-API-Key": api_key, "Content-Type": "application/json"},
        json.dumps(RISK_REQUEST_EXAMPLE).encode(),
    )  # fmt: skip
    assert status == 200, body[:500]
    assert 0.0 <= json.loads(body)["probability"] <= 1.0

    audit = stack.services["api"].mounts["/audit"] / "audit.jsonl"
    record = json.loads(audit.read_text().splitlines()[-1])
    assert record["outcome"] == "ok" and record["subject"] == "apikey:ehr-test"
    assert str(RISK_REQUEST_EXAMPLE["client_id"]) not in audit.read_text()

    # A restart keeps the champion; it was trained on simulated clients, and says so loudly.
    again = stack.run_again("trainer")
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-2000:]
    assert "WARNING: the model serving /v1/risk was trained on SIMULATED clients" in again.stderr

    # A clinic's export in the data folder is trained on once, and promoted through the gates.
    data = stack.services["trainer"].mounts["/data"]
    _clinic_export(data, seed=11)
    again = stack.run_again("trainer")
    assert "training on the mounted data folder" in again.stderr
    assert _versions(mlflow_port) == 2
    promoted = "trained on the mounted export, is the champion" in again.stderr
    if promoted:
        assert again.returncode == 0, again.stderr[-2000:]
    else:  # refused: the simulated demo champion must not go on scoring real clients
        assert again.returncode == 1 and "simulated demo model" in again.stderr, again.stderr
    # Started again on the same export: nothing is trained, no version is added.
    again = stack.run_again("trainer")
    assert "training on the mounted data folder" not in again.stderr
    assert _versions(mlflow_port) == 2
    assert again.returncode == (0 if promoted else 1), again.stderr[-2000:]
    # A changed export is trained on.
    _clinic_export(data, seed=12)
    again = stack.run_again("trainer")
    assert "training on the mounted data folder" in again.stderr, again.stderr[-2000:]
    assert _versions(mlflow_port) == 3
    # An export that breaks the data contract fails the job: it is not a gate refusal.
    sessions = data / "sessions.csv"
    sessions.write_text(sessions.read_text().replace(",", ";", 40))
    again = stack.run_again("trainer")
    assert again.returncode == 1 and "ERROR: training on the mounted export failed" in (
        again.stderr
    ), again.stderr[-2000:]
    assert _versions(mlflow_port) == 3

    if stack.root:
        app = stack.app_uid
        keys = stack.services["api"].mounts["/keys"] / "api-keys.json"
        assert keys.stat().st_uid == app and keys.stat().st_mode & 0o777 == 0o400
        assert _as_uid(app, "cat", str(keys)) == 0
        artifacts = stack.services["mlflow"].mounts["/mlartifacts"]
        assert any(p.is_file() for p in artifacts.rglob("*"))  # the trainer's model
        for folder in (artifacts, audit.parent):
            assert folder.stat().st_uid == app
            assert _as_uid(app, "touch", str(folder / "written-by-app")) == 0
        if stack.as_app:
            for name in ("mlflow", "api"):
                proc = stack.services[name].proc
                assert proc is not None and _uid_of(proc.pid) == app
            assert audit.stat().st_uid == app
    assert elapsed < STACK_TIMEOUT_S
