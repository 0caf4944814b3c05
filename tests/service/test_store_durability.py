"""A session acknowledged with a 2xx survives SIGKILL of the server right after: real
``alliance-risk serve`` on 127.0.0.1, killed with SIGKILL (its whole process group), restarted
on the same store."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Registry, bearer
from tests.service.serving import serving_process
from tests.service.test_clients_api import WRITER, a_client, client_fields


@pytest.mark.integration
def test_acknowledged_sessions_survive_sigkill(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store' / 'store.db'}"
    body = a_client(registry, 2)
    headers = bearer(dev_key_dir, scopes=WRITER)
    sessions_url = f"/v1/clients/{body['client_id']}/sessions"
    store = {"ALLIANCE_RISK_STORE_URL": store_url}
    with serving_process(registry, tmp_path / "first", dev_key_dir, env=store) as (url, proc):
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for i, s in enumerate(body["sessions"]):
                payload = {"sessions": [s], **({"client": client_fields(body)} if i == 0 else {})}
                assert http.post(sessions_url, json=payload).status_code == 200
        os.killpg(proc.pid, signal.SIGKILL)  # right after the last 2xx
        proc.wait(timeout=30)
    with serving_process(registry, tmp_path / "second", dev_key_dir, env=store) as (url, _):
        got = httpx.get(f"{url}/v1/clients/{body['client_id']}/risk",
                        params={"history": "true"}, headers=headers, timeout=30)  # fmt: skip
    assert got.status_code == 200
    assert got.json()["sessions_stored"] == len(body["sessions"])
    assert len(got.json()["history"]) == len(body["sessions"])
