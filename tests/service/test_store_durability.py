"""A session acknowledged with a 2xx survives SIGKILL of the server right after: real
``alliance-risk serve`` on 127.0.0.1, killed with SIGKILL (its whole process group), restarted
on the same store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.service.conftest import MODEL_NAME, Registry, bearer
from tests.service.faults import wait_ready
from tests.service.test_clients_api import WRITER, a_client, client_fields

HOST = "127.0.0.1"


@contextlib.contextmanager
def _serve(registry: Registry, workdir: Path, keys: Path, store_url: str,
           ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # fmt: skip
    """A ready ``alliance-risk serve`` (dev auth, one worker) and its process."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pyproject.toml").write_text('[project]\nname = "alliance-risk"\n')
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ALLIANCE_RISK_")},
        "MLFLOW_TRACKING_URI": registry.uri,
        "OMP_NUM_THREADS": "1",
        "ALLIANCE_RISK_AUTH_DEV_KEY_DIR": str(keys),
        "ALLIANCE_RISK_AUDIT_PATH": str(workdir / "audit.jsonl"),
        "ALLIANCE_RISK_AUDIT_KEY_FILE": str(workdir / "audit.key"),
        "ALLIANCE_RISK_LIMIT_RATE_PER_CLINIC_PER_S": "0",
        "ALLIANCE_RISK_LIMIT_RATE_PER_TOKEN_PER_S": "0",
        "ALLIANCE_RISK_STORE_URL": store_url,
    }
    exe = Path(sys.executable).parent / "alliance-risk"
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", "--host", HOST, "--port", str(port),
             "--model", f"models:/{MODEL_NAME}@champion", "--no-bootstrap",
             "--poll-interval", "0", "--dev-auth", "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
        )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        wait_ready(url, proc, log_path, timeout=120)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.integration
def test_acknowledged_sessions_survive_sigkill(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store' / 'store.db'}"
    body = a_client(registry, 2)
    headers = bearer(dev_key_dir, scopes=WRITER)
    sessions_url = f"/v1/clients/{body['client_id']}/sessions"
    with _serve(registry, tmp_path / "first", dev_key_dir, store_url) as (url, proc):
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for i, s in enumerate(body["sessions"]):
                payload = {"sessions": [s], **({"client": client_fields(body)} if i == 0 else {})}
                assert http.post(sessions_url, json=payload).status_code == 200
        os.killpg(proc.pid, signal.SIGKILL)  # right after the last 2xx
        proc.wait(timeout=30)
    with _serve(registry, tmp_path / "second", dev_key_dir, store_url) as (url, _):
        got = httpx.get(f"{url}/v1/clients/{body['client_id']}/risk",
                        params={"history": "true"}, headers=headers, timeout=30)  # fmt: skip
    assert got.status_code == 200
    assert got.json()["sessions_stored"] == len(body["sessions"])
    assert len(got.json()["history"]) == len(body["sessions"])
