"""Load and faults (issue 6): 60 s phases at concurrency 32 (8 s with ``--quick``) against the
service under uvicorn, with valid tokens, through the harness the tests use
(``tests/service/faults.py``): hot reload mid-load, a corrupt version promoted and refused, a
SIGKILL and restart, and the tracking server stopped mid-load.

Set-up: two versions of a model trained by the real ``alliance-risk train`` on a simulated
cohort of 3,000 clients (seed 5) in a SQLite registry, served through a real ``mlflow server``.
Reported per phase: requests, failures, status counts, transport errors, requests/s, p50 and
p99, the model versions answering and the version switches; plus the restart time after the
kill and the audit file's line count against its parseable records. The same-run baseline is
phase 1's own throughput: every later phase is reported as a ratio to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._harness import provenance
from tests.service.faults import run_scenario
from tests.service.helpers import request_for
from training.simulate import simulate_cohort, write_cohort

BIN = Path(sys.executable).parent
MODEL_NAME = "alliance-risk"


def _two_versions(tmp: Path) -> Path:
    cohort = simulate_cohort(3000, seed=5)
    write_cohort(cohort, tmp / "cohort")
    db = tmp / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1"}
    for seed in ("0", "1"):
        cmd = [str(BIN / "alliance-risk"), "train", "--sessions", str(tmp / "cohort/sessions.csv"),
               "--clients", str(tmp / "cohort/clients.csv"), "--trials", "2", "--seed", seed]  # fmt: skip
        subprocess.run(cmd, env=env, cwd=tmp, check=True, capture_output=True)
    return db


def run(quick: bool) -> dict[str, Any]:
    started = provenance()
    phase_s, concurrency = (8.0, 8) if quick else (60.0, 32)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = _two_versions(tmp)
        cohort = simulate_cohort(300, seed=9)
        bodies = [request_for(cohort, c) for c in cohort.clients["client_id"][:50]]
        work = tmp / "run"
        work.mkdir()
        out = run_scenario(db, MODEL_NAME, bodies, tmp / "keys", work,
                           phase_s=phase_s, concurrency=concurrency)  # fmt: skip
    base = out["hot_reload"]["req_per_s"]
    for phase in ("bad_model", "crash", "registry_outage"):
        out[phase]["throughput_ratio_to_hot_reload"] = round(out[phase]["req_per_s"] / base, 2)
    out["provenance"] = started
    out["zero_failures_outside_the_crash"] = all(
        out[p]["failed"] == 0 for p in ("hot_reload", "bad_model", "registry_outage")
    )
    out["summary"] = (
        f"{concurrency} clients x {phase_s:.0f} s per phase: hot reload {out['hot_reload']['failed']} "
        f"failed of {out['hot_reload']['requests']} (p50 {out['hot_reload']['p50_ms']} ms, p99 "
        f"{out['hot_reload']['p99_ms']} ms, versions {out['hot_reload']['version_switches']}); "
        f"bad model {out['bad_model']['failed']} failed; crash restart {out.get('restart_s')} s; "
        f"outage {out['registry_outage']['failed']} failed, registry "
        f"{out['registry_outage']['readyz']['registry']}"
    )
    return out
