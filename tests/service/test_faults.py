"""The load and fault scenario of issue 6, short (a few seconds per phase) for ``make test``;
``make bench`` runs the same harness for 60 s at concurrency 32."""

from __future__ import annotations

from pathlib import Path

from tests.service.conftest import MODEL_NAME, Registry
from tests.service.faults import run_scenario
from tests.service.helpers import request_for


def test_reload_bad_model_crash_and_outage_under_load(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    bodies = [request_for(registry.cohort, c) for c in registry.cohort.clients["client_id"][:12]]
    out = run_scenario(Path(registry.uri.removeprefix("sqlite:///")), MODEL_NAME, bodies,
                       dev_key_dir, tmp_path, phase_s=4.0, concurrency=6)  # fmt: skip

    hot = out["hot_reload"]
    assert hot["failed"] == 0 and hot["requests"] > 50
    assert hot["version_switches"][:1] == ["2"] and hot["versions"] == ["1", "2"]

    bad = out["bad_model"]
    assert bad["failed"] == 0 and bad["versions"] == ["2"]
    assert bad["readyz"]["ready"] and bad["readyz"]["last_reload"] == "refused"

    crash = out["crash"]
    # Only connection errors while the process was down; every answer was a 200 from version 2.
    assert set(crash["statuses"]) == {200} and crash["versions"] == ["2"]
    assert crash["readyz"]["model"]["version"] == "2"
    assert out["audit"]["lines"] == out["audit"]["parseable"] >= out["audit_lines_at_kill"] > 0

    outage = out["registry_outage"]
    assert outage["failed"] == 0 and outage["versions"] == ["2"]
    assert outage["readyz"]["ready"] and outage["readyz"]["registry"] == "unreachable"
