"""A third-party CDS Hooks client drives the service over loopback: HealthChain's SandboxClient.

HealthChain (PyPI ``healthchain``, pinned below) moves the serving stack (it pins older fastapi,
httpx and fhir.resources), so it never enters the project's venv: the test creates a venv of its
own once, outside the checkout (``~/.cache/alliance-risk/``, or
``ALLIANCE_RISK_HEALTHCHAIN_VENV``), installs HealthChain there with pip (about 20 s; CI's
``make test`` does the same on first run), and reuses it afterwards.

In that venv a driver builds patient-view requests with HealthChain's own request constructor
and context model, sends them with ``SandboxClient.send_requests`` to the app served by uvicorn
on 127.0.0.1, and parses the answers with HealthChain's ``CDSResponse`` (its card model checks
the summary length, the indicator and the override reasons). SandboxClient sends no
Authorization header (it targets HealthChain's own gateway), so the driver adds each request's
single-use CDS Hooks JWT through an httpx request hook: that is the only thing added to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.conftest import free_port
from tests.service.conftest import Registry
from tests.service.test_cds_support import (
    PATIENT_VIEW,
    cds_app,
    cds_token,
    client_resources,
    ehr_key,
    hook_body,
)

HEALTHCHAIN = "healthchain==0.16.1"
DRIVER = r"""
import json, sys
import httpx
from healthchain.models import CDSResponse
from healthchain.sandbox import SandboxClient
from healthchain.sandbox.requestconstructors import CdsRequestConstructor
from healthchain.sandbox.workflows import Workflow

args = json.load(open(sys.argv[1]))
tokens = iter(args["tokens"])
_init = httpx.Client.__init__


def _with_jwt(self, *a, **kw):
    def sign(request):
        request.headers["Authorization"] = "Bearer " + next(tokens)
    kw.setdefault("event_hooks", {}).setdefault("request", []).append(sign)
    _init(self, *a, **kw)


httpx.Client.__init__ = _with_jwt
client = SandboxClient(url=args["url"], workflow="patient-view", timeout=30)
for r in args["requests"]:
    client.requests.append(CdsRequestConstructor().construct_request(
        prefetch_data=r["prefetch"], workflow=Workflow.patient_view, context=r["context"]))
responses = client.send_requests()
parsed = [CDSResponse(**body).model_dump(mode="json", exclude_none=True) for body in responses]
json.dump({"responses": responses, "parsed": parsed}, sys.stdout)
"""


def _venv() -> Path:
    default = Path.home() / ".cache" / "alliance-risk" / "venv-healthchain-0.16.1"
    venv = Path(os.environ.get("ALLIANCE_RISK_HEALTHCHAIN_VENV", default))
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", HEALTHCHAIN],
                       check=True, timeout=600)  # fmt: skip
        ready.write_text(HEALTHCHAIN)
    return python


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # in a thread: the test runner owns signals
        pass


@pytest.mark.integration
def test_healthchain_sandbox_client_gets_our_cards(registry: Registry, tmp_path: Path) -> None:
    python = _venv()
    key = ehr_key()
    app = cds_app(registry, tmp_path / "cds", key, cds_low_risk_card="info")
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        profile = app.state.store.current.scorer.profile
        requests: list[dict[str, Any]] = []
        for cid in registry.cohort.clients["client_id"].head(3):
            body = hook_body(client_resources(registry, str(cid), profile))
            requests.append({"context": body["context"], "prefetch": body["prefetch"]})
        args = {
            "url": f"http://127.0.0.1:{port}/cds-services/{PATIENT_VIEW}",
            "requests": requests,
            "tokens": [cds_token(key) for _ in requests],
        }
        (tmp_path / "args.json").write_text(json.dumps(args))
        (tmp_path / "driver.py").write_text(DRIVER)
        run = subprocess.run([str(python), str(tmp_path / "driver.py"), str(tmp_path / "args.json")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        out = json.loads(run.stdout)
    finally:
        server.should_exit = True
        thread.join(30)
    assert len(out["responses"]) == len(requests)
    for raw, parsed in zip(out["responses"], out["parsed"], strict=True):
        assert raw.get("cards"), "every request got a card (low-risk info cards are on)"
        (card,) = parsed["cards"]
        assert card["indicator"] in ("info", "warning", "critical")
        assert len(card["summary"]) <= 140 and card["overrideReasons"]
    assert not thread.is_alive()
