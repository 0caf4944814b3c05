"""``alliance-risk serve`` in a child process on a random loopback port, for tests of the real
server (connections, workers, metrics across processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port
from tests.service.conftest import MODEL_NAME, Registry
from tests.service.faults import wait_ready

HOST = "127.0.0.1"
CHAMPION = f"models:/{MODEL_NAME}@champion"


@contextlib.contextmanager
def serving(
    registry: Registry,
    workdir: Path,
    dev_key_dir: Path,
    *,
    workers: int = 1,
    poll_interval_s: float = 0,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Yield the base URL of a ready ``alliance-risk serve``; stop it (and its workers) after.

    Rate limits are off unless ``env`` sets them; ``env`` overrides any ``ALLIANCE_RISK_*``.
    """
    with serving_process(registry, workdir, dev_key_dir, workers=workers,
                         poll_interval_s=poll_interval_s, env=env) as (url, _):  # fmt: skip
        yield url


@contextlib.contextmanager
def serving_process(
    registry: Registry,
    workdir: Path,
    dev_key_dir: Path,
    *,
    workers: int = 1,
    poll_interval_s: float = 0,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`serving`, yielding the server's process too (tests that kill it themselves)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # The project folder of this serve (its data/demo, dev keys): not the checkout's.
    (workdir / "pyproject.toml").write_text('[project]\nname = "alliance-risk"\n')
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ALLIANCE_RISK_")},
        "MLFLOW_TRACKING_URI": registry.uri,
        "OMP_NUM_THREADS": "1",
        "ALLIANCE_RISK_AUTH_DEV_KEY_DIR": str(dev_key_dir),
        "ALLIANCE_RISK_AUDIT_PATH": str(workdir / "audit.jsonl"),
        "ALLIANCE_RISK_AUDIT_KEY_FILE": str(workdir / "audit.key"),
        "ALLIANCE_RISK_LIMIT_RATE_PER_CLINIC_PER_S": "0",
        "ALLIANCE_RISK_LIMIT_RATE_PER_TOKEN_PER_S": "0",
        **(env or {}),
    }
    exe = Path(sys.executable).parent / "alliance-risk"
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", "--host", HOST, "--port", str(port), "--model", CHAMPION,
             "--no-bootstrap", "--poll-interval", str(poll_interval_s), "--dev-auth", "--workers", str(workers)],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        wait_ready(url, proc, log_path, timeout=120)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
