"""Load and fault harness shared by ``tests/service/test_faults.py`` (short, in ``make test``)
and ``benchmarks/bench_faults.py`` (60 s at concurrency 32, in ``make bench``).

Everything runs for real on 127.0.0.1: an ``mlflow server`` over a SQLite registry holding two
good versions, the service under uvicorn, and client threads posting ``/v1/risk`` with valid
tokens. Phases, each under load:

1. hot reload: the ``champion`` alias moves from version 1 to 2 mid-phase;
2. bad model: a corrupt version 3 is promoted, refused, and the alias rolled back to 2;
3. crash: the service is killed with SIGKILL and restarted; it serves version 2 again and every
   audit line written before the kill is whole;
4. registry outage: the tracking server is stopped; the loaded model keeps serving and
   ``/readyz`` reports the outage.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
from mlflow import MlflowClient

from tests.conftest import free_port, running_mlflow_server

HOST = "127.0.0.1"


@dataclass
class PhaseResult:
    """What the clients saw during one phase."""

    name: str
    duration_s: float
    statuses: Counter = field(default_factory=Counter)
    transport_errors: int = 0
    versions: list[str] = field(default_factory=list)  # in completion order
    latencies_s: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors

    @property
    def failed(self) -> int:
        return self.requests - self.statuses.get(200, 0)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 2)) if lat else (
            lambda q: None)  # fmt: skip
        switches = [b for a, b in zip(self.versions, self.versions[1:], strict=False) if a != b]
        return {
            "requests": self.requests,
            "failed": self.failed,
            "statuses": dict(self.statuses),
            "transport_errors": self.transport_errors,
            "req_per_s": round(self.requests / self.duration_s, 1),
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "versions": sorted(set(self.versions)),
            "version_switches": switches,
            "median_ms": round(statistics.median(lat) * 1e3, 2) if lat else None,
        }


def run_load(url: str, bodies: list[dict], headers: dict[str, str], concurrency: int,
             seconds: float, name: str, during: Callable[[], None] | None = None) -> PhaseResult:  # fmt: skip
    """``concurrency`` threads post bodies for ``seconds``; ``during`` runs meanwhile."""
    result = PhaseResult(name, seconds)
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            i = k
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/risk", json=bodies[i % len(bodies)])
                except httpx.TransportError:
                    with lock:
                        result.transport_errors += 1
                    time.sleep(0.05)
                    continue
                elapsed = time.perf_counter() - t0
                i += concurrency
                with lock:
                    result.statuses[r.status_code] += 1
                    result.latencies_s.append(elapsed)
                    if r.status_code == 200:
                        result.versions.append(r.json()["model"]["version"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        if during is not None:
            during()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    return result


@contextmanager
def service(env: dict[str, str], cwd: Path, log: Path) -> Iterator[tuple[str, list[Any]]]:
    """uvicorn serving the app; yields (url, [process]) so a test can kill and replace it."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
           "--host", HOST, "--port", str(port), "--no-access-log"]  # fmt: skip
    procs: list[Any] = []

    def start() -> None:
        with log.open("ab") as out:
            procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        wait_ready(url, procs[-1], log)

    start()
    try:
        yield url, [procs, start]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)


def wait_ready(url: str, proc: Any, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service not ready within {timeout} s:\n{log.read_text()[-2000:]}")


def register_corrupt(uri: str, name: str, good_version: str, workdir: Path) -> str:
    """A copy of ``good_version`` with a garbage booster, registered as a new version."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{good_version}",
                                                     dst_path=str(workdir / "corrupt")))  # fmt: skip
    booster = next(local.rglob("booster.ubj"))
    booster.write_bytes(b"\x00garbage\x00" * 64)
    # A tracking server only registers sources inside a run's artifacts: log the copy as one.
    with mlflow.start_run(run_name="corrupt-copy") as run:
        mlflow.log_artifacts(str(local), artifact_path="model")
    mv = MlflowClient(uri, uri).create_model_version(
        name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    return str(mv.version)


def run_scenario(registry_db: Path, model_name: str, bodies: list[dict], key_dir: Path,
                 workdir: Path, *, phase_s: float, concurrency: int) -> dict[str, Any]:  # fmt: skip
    """All four phases; returns per-phase summaries and the checks' raw facts."""
    from service.audit_log import records
    from service.auth import mint_dev_token

    db = workdir / "registry.db"
    shutil.copyfile(registry_db, db)
    audit = workdir / "audit.jsonl"
    out: dict[str, Any] = {"concurrency": concurrency, "phase_s": phase_s}
    clinic = bodies[0]["clinic_id"]
    headers = {"Authorization": f"Bearer {mint_dev_token(clinic, ['risk:read'], key_dir=key_dir)}"}
    with running_mlflow_server(f"sqlite:///{db}", workdir / "mlflow") as (registry, stop_registry):
        client = MlflowClient(registry, registry)
        client.set_registered_model_alias(model_name, "champion", "1")
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": registry,
            "ALLIANCE_RISK_MODEL_URI": f"models:/{model_name}@champion",
            "ALLIANCE_RISK_POLL_INTERVAL_S": "0.5",
            "ALLIANCE_RISK_REGISTRY_TIMEOUT_S": "2",
            "OMP_NUM_THREADS": "1",
            "ALLIANCE_RISK_AUTH_MODE": "dev",
            "ALLIANCE_RISK_AUTH_DEV_KEY_DIR": str(key_dir),
            "ALLIANCE_RISK_AUDIT_PATH": str(audit),
            "ALLIANCE_RISK_AUDIT_KEY_FILE": str(workdir / "audit.key"),
            "ALLIANCE_RISK_LIMIT_RATE_PER_CLINIC_PER_S": "0",
            "ALLIANCE_RISK_LIMIT_RATE_PER_TOKEN_PER_S": "0",
        }
        with service(env, workdir, workdir / "service.log") as (url, (procs, restart)):

            def promote_v2() -> None:
                time.sleep(phase_s / 2)
                client.set_registered_model_alias(model_name, "champion", "2")

            a = run_load(url, bodies, headers, concurrency, phase_s, "hot_reload", promote_v2)
            out["hot_reload"] = a.summary()

            bad = register_corrupt(registry, model_name, "2", workdir)

            def promote_bad() -> None:
                client.set_registered_model_alias(model_name, "champion", bad)

            b = run_load(url, bodies, headers, concurrency, phase_s, "bad_model", promote_bad)
            out["bad_model"] = {**b.summary(), "readyz": httpx.get(f"{url}/readyz").json()}
            client.set_registered_model_alias(model_name, "champion", "2")  # operator rollback

            def crash() -> None:
                time.sleep(phase_s / 3)
                os.killpg(procs[-1].pid, signal.SIGKILL)
                procs[-1].wait(timeout=10)
                out["audit_lines_at_kill"] = len(audit.read_bytes().splitlines())
                t0 = time.monotonic()
                restart()
                out["restart_s"] = round(time.monotonic() - t0, 2)

            c = run_load(url, bodies, headers, concurrency, phase_s, "crash", crash)
            out["crash"] = {**c.summary(), "readyz": httpx.get(f"{url}/readyz").json()}
            lines = audit.read_bytes().splitlines()
            whole = list(records(audit, skip_invalid=True))
            out["audit"] = {"lines": len(lines), "parseable": len(whole)}

            def outage() -> None:
                time.sleep(phase_s / 4)
                stop_registry()

            d = run_load(url, bodies, headers, concurrency, phase_s, "registry_outage", outage)
            time.sleep(1.5)  # at least two polls after the stop
            out["registry_outage"] = {**d.summary(), "readyz": httpx.get(f"{url}/readyz").json()}
    return out
