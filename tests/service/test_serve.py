"""``alliance-risk serve`` from an empty installation: bootstrap a model, serve, then restart
fast on the same model (what ``make run`` does), all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.service.helpers import check_risk_body

HOST = "127.0.0.1"


def _serve(cwd: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    exe = Path(sys.executable).parent / "alliance-risk"
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--poll-interval", "0",
             "--bootstrap-clients", "1500", "--dev-auth"],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_serve_bootstraps_a_model_then_restarts_on_it(tmp_path: Path) -> None:
    # A project folder of its own: outside a checkout the store would be the installed one's.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "alliance-risk"\n')
    log = tmp_path / "serve.log"
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = _serve(tmp_path, port, log)
    try:
        _wait_ready(url, proc, log, timeout=300)
        printed = log.read_text()
        assert "No champion model in the registry yet" in printed
        # The printed curl, run as a user would paste it (it mints its own dev token).
        curl = next(line for line in printed.splitlines() if line.startswith("curl "))
        done = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        body = check_risk_body(json.loads(done.stdout))
        assert body.model.version == "1" and body.explanation.drivers
        assert httpx.post(f"{url}/v1/risk", json={}, timeout=10).status_code == 401
    finally:
        _stop(proc)
    assert (tmp_path / ".mlflow" / "mlflow.db").exists()

    log2 = tmp_path / "serve2.log"
    proc = _serve(tmp_path, port, log2)
    try:
        waited = _wait_ready(url, proc, log2, timeout=60)
        assert "No champion" not in log2.read_text()
        assert waited < 30, f"restart took {waited:.1f} s"
    finally:
        _stop(proc)


def test_serve_refuses_to_start_without_authentication(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLIANCE_RISK_AUTH")}
    exe = Path(sys.executable).parent / "alliance-risk"
    done = subprocess.run([str(exe), "serve", "--port", str(free_port()), "--no-bootstrap"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "Authentication is required" in done.stderr
    refused = subprocess.run(
        [str(exe), "serve", "--port", str(free_port()), "--dev-auth", "--no-bootstrap"],
        cwd=tmp_path, env={**env, "ALLIANCE_RISK_DEPLOYMENT": "compose"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "Refused" in refused.stderr


def test_the_curl_example_goes_to_a_temporary_folder_when_the_project_is_not_writable(
    tmp_path: Path,
) -> None:
    from service.cli import write_example

    example = {"clinic_id": "clinic-a"}
    written = write_example(tmp_path / "data" / "demo", example)
    assert written == tmp_path / "data" / "demo" / "request.json"
    assert json.loads(written.read_text()) == example
    # A folder that cannot be created (a file is in the way; chmod does not stop root).
    (tmp_path / "blocked").write_text("")
    elsewhere = write_example(tmp_path / "blocked" / "demo", example)
    assert not elsewhere.is_relative_to(tmp_path)
    assert json.loads(elsewhere.read_text()) == example
    elsewhere.unlink()
    elsewhere.parent.rmdir()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file"),
        ("{not json", "json_invalid"),
        # A raw key where its hash belongs: refused, and the value is never printed.
        ('{"keys": [{"id": "k1", "hash": "ar_SECRETKEYVALUE", "clinic": "north", '
         '"scopes": ["risk:read"]}]}', "keys.0.hash"),
        ('{"keys": [{"id": "k1", "hash": "sha256:' + "a" * 64 + '", "clinic": "north", '
         '"scopes": ["risk:everything"]}]}', "keys.0.scopes"),
    ],
)  # fmt: skip
def test_serve_with_a_bad_api_keys_file_exits_2_with_one_line(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    keys = tmp_path / "keys.json"
    if content is not None:
        keys.write_text(content)
    env = {"ALLIANCE_RISK_AUTH_MODE": "api_key", "ALLIANCE_RISK_AUTH_API_KEYS_FILE": str(keys)}
    result = CliRunner().invoke(app, ["serve", "--no-bootstrap"], env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Cannot start: "), result.output
    assert str(keys) in lines[0] and reason in lines[0]
    assert "SECRETKEYVALUE" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("mode", "header", "absent"),
    [
        ("dev", "Authorization: Bearer $(", "X-API-Key"),
        ("jwt", 'Authorization: Bearer $YOUR_TOKEN"', "X-API-Key"),
        ("api_key", 'X-API-Key: $YOUR_API_KEY"', "Authorization"),
    ],
)
def test_the_printed_curl_sends_the_credential_the_auth_mode_expects(
    mode: str, header: str, absent: str
) -> None:
    from service.cli import _curl

    line = _curl(HOST, 8000, Path("request.json"), "clinic-a", mode)
    assert f'-H "{header}' in line and absent not in line
