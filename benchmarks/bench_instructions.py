"""Instructions per request, counted by callgrind: a figure the machine's noise cannot move.

Wall-clock ratios on this machine (2 shared vCPUs) move by tens of percent between minutes,
and Python code moves more than the xgboost floor does. Callgrind counts the user-space
instructions a process executes, which depend only on the code, its inputs and the libraries:
the same count twice, whatever else the machine is doing. This benchmark puts a number on
what the service itself costs, next to ``bench_service``'s wall-clock figures.

Set-up as ``bench_service`` (the same cohort, seed and model; ``--quick`` trains a smaller one).
Then, each under ``valgrind --tool=callgrind --instr-atstart=no``, instrumentation switched on
only around the measured calls (``callgrind_control``), after a warm-up:

1. **The floor**, in process: ``bench_service``'s two raw ways to get a margin plus exact
   TreeSHAP for one row (``nthread=1``); the one with fewer instructions is the floor.
2. **Our server**, ``uvicorn service.app:create_app`` as ``bench_service`` runs it, serving
   ``POST /v1/risk`` (12 appointments, explanation included) and ``GET /livez`` over one
   keep-alive connection: everything the server process executes in user space for them
   (HTTP parsing, framework, authentication, audit, scoring, JSON).

Each is counted for ``n1`` and ``n2`` calls and reported per call as the difference over
``n2 - n1``, so that switching instrumentation on and off cancels out. Not counted: the
kernel's share (loopback TCP, system calls), and how fast the instructions run. Interpreted
Python retires fewer instructions per cycle than xgboost's C++, so a wall-clock ratio is
larger than this one; this one is the part the code controls.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_service import (
    HOST,
    MODEL_NAME,
    ROOT,
    SEED,
    SINGLE_SESSIONS,
    _free_port,
    _ours_cmd,
    _pick_clients,
    _server,
    _server_env,
    _train_and_promote,
    floor_calls,
)
from tests.service.helpers import request_for
from training.simulate import simulate_cohort

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


def _ctl(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True)


def _totals(dump: Path) -> int:
    m = re.search(r"^totals:\s+(\d+)", dump.read_text(errors="replace"), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"{dump} has no totals line")
    return int(m.group(1))


def _count(pid: int, out_prefix: Path, fn: Any, n: int) -> int:
    """Instructions of process ``pid`` while ``fn(n)`` runs (instrumentation on only then)."""
    before = set(out_prefix.parent.glob(f"{out_prefix.name}.{pid}.*"))
    _ctl(pid, "-z")
    _ctl(pid, "--instr=on")
    fn(n)
    _ctl(pid, "--instr=off")
    _ctl(pid, "-d")
    deadline = time.monotonic() + 60
    while True:
        new = set(out_prefix.parent.glob(f"{out_prefix.name}.{pid}.*")) - before
        if new:
            dump = max(new, key=lambda p: int(p.suffix[1:]))
            time.sleep(0.2)  # the dump is written by the traced process itself
            return _totals(dump)
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.1)


def _per_call(pid: int, out_prefix: Path, fn: Any, n1: int, n2: int) -> dict[str, Any]:
    t1, t2 = _count(pid, out_prefix, fn, n1), _count(pid, out_prefix, fn, n2)
    return {"calls": [n1, n2], "instructions": [t1, t2], "per_call": round((t2 - t1) / (n2 - n1))}


def _floor_child(uri: str, body_file: str, out_prefix: str, n1: int, n2: int) -> None:
    """Runs under callgrind: counts the floor's two ways on its own process, prints JSON."""
    import mlflow

    from models.pyfunc import load_scorer
    from service import scoring
    from service.schemas import RiskRequest

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    scorer = load_scorer(f"models:/{MODEL_NAME}/1")
    req = RiskRequest.model_validate_json(Path(body_file).read_bytes())
    x = scorer.score_arrays(scoring.single_arrays(req, scorer.profile)).features[0]
    calls = floor_calls(scorer.booster, x)

    def repeat(fn: Any) -> Any:
        def run_n(n: int) -> None:
            for _ in range(n):
                fn()

        return run_n

    ways = {name: repeat(fn) for name, fn in calls.items()}
    for fn in ways.values():
        fn(30)  # warm-up, not counted
    pid, prefix = os.getpid(), Path(out_prefix)
    print(json.dumps({k: _per_call(pid, prefix, fn, n1, n2) for k, fn in ways.items()}))


def run(quick: bool) -> dict[str, Any]:
    for tool in ("valgrind", "callgrind_control"):
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-tool.sh"), tool, "valgrind"],
                       check=True)  # fmt: skip
    n1, n2 = (20, 60) if quick else (100, 300)
    cohort = simulate_cohort(2_000 if quick else 5_000, seed=SEED)
    single_id = _pick_clients(cohort, 1)[0]
    single_body = request_for(cohort, single_id)
    assert len(single_body["sessions"]) == SINGLE_SESSIONS
    single_bytes = json.dumps(single_body).encode()

    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        uri, setup_s = _train_and_promote(cohort, tmp, quick)
        env = _server_env(uri, tmp)
        (tmp / "single.json").write_bytes(single_bytes)

        t0 = time.perf_counter()
        out = tmp / "floor.cg"
        floor_run = subprocess.run(
            [*VALGRIND, f"--callgrind-out-file={out}.%p", sys.executable, "-m",
             "benchmarks.bench_instructions", "floor", uri, str(tmp / "single.json"), str(out),
             str(n1), str(n2)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if floor_run.returncode != 0:
            raise RuntimeError(f"floor under callgrind failed:\n{floor_run.stderr[-3000:]}")
        floor_ways = json.loads(floor_run.stdout.strip().splitlines()[-1])
        floor_s = time.perf_counter() - t0

        from service.auth import mint_dev_token

        token = mint_dev_token(single_body["clinic_id"], ["risk:read"], ttl_s=3600,
                               key_dir=tmp / "dev-keys")  # fmt: skip
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        port = _free_port()
        srv_out = tmp / "server.cg"
        cmd = [*VALGRIND, f"--callgrind-out-file={srv_out}.%p", *_ours_cmd(port)]
        t0 = time.perf_counter()
        with _server("ours-callgrind", cmd, env=env, cwd=tmp, ready_path="/readyz",
                     port=port) as srv:  # fmt: skip
            conn = http.client.HTTPConnection(HOST, port, timeout=300)

            def requests(method: str, path: str, body: bytes | None) -> Any:
                def send(n: int) -> None:
                    for _ in range(n):
                        conn.request(method, path, body=body, headers=headers if body else {})
                        resp = conn.getresponse()
                        resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"{method} {path} answered {resp.status}")

                return send

            risk = requests("POST", "/v1/risk", single_bytes)
            livez = requests("GET", "/livez", None)
            risk(30)
            livez(30)
            # valgrind runs the program in its own process: the server's pid is valgrind's.
            server = {
                "post_risk": _per_call(srv.proc.pid, srv_out, risk, n1, n2),
                "get_livez": _per_call(srv.proc.pid, srv_out, livez, n1, n2),
            }
            conn.close()
        server_s = time.perf_counter() - t0

    floor_name = min(floor_ways, key=lambda k: floor_ways[k]["per_call"])
    floor = floor_ways[floor_name]["per_call"]
    risk_i = server["post_risk"]["per_call"]
    livez_i = server["get_livez"]["per_call"]
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout
    return {
        "valgrind": version.strip(),
        "setup_s": setup_s,
        "callgrind_s": {"floor": round(floor_s, 1), "server": round(server_s, 1)},
        "floor": {"used": floor_name, **floor_ways},
        "server": server,
        "ratio_post_risk_to_floor": round(risk_i / floor, 2),
        "ratio_get_livez_to_floor": round(livez_i / floor, 2),
        "summary": (
            f"POST /v1/risk: {risk_i / 1e6:.2f} M instructions per request in the server "
            f"process (GET /livez {livez_i / 1e6:.2f} M), the floor {floor / 1e6:.2f} M: "
            f"{risk_i / floor:.2f}x"
        ),
    }


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "floor":
        _floor_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit("usage: python -m benchmarks.bench_instructions floor URI BODY OUT N1 N2")
