"""The client store over HTTP (issue 21): caseload 304s and polling, a 5,000-client caseload,
and rescoring 100,000 stored open episodes after a promotion while serving continues.

Set-up: a simulated cohort (5,000 clients; 2,000 with ``--quick``, seed 3) trained and promoted
with the real commands into a fresh SQLite MLflow store (:mod:`benchmarks.bench_service`), and
version 2 registered as a copy of version 1 (a promotion the service sees as a new champion).
The client store is a SQLite file (the default backend), seeded in bulk through SQLAlchemy
Core: 100,000 open episodes (10,000) over 20 clinics of 5,000 (500), each with its simulated
appointments (the cohort's histories repeated under new ids), a version-1 score made ten days
ago as the latest one, and the rescoring lease marked done for version 1. One worker of
``alliance-risk serve`` (dev authentication, rate limits off, the alias polled every second,
the access log on: its ``duration_ms`` is the server's time for a request, from the first
middleware to the last byte).

1. 304: ``GET /v1/clinics/bench-00/caseload`` with the current ``If-None-Match`` over one
   keep-alive connection (2,000 requests; 300), the server's duration of each 304 from the
   access log and the client's wall time.
2. Polling: 200 clinics (one token each; a new connection per poll, since the server closes
   keep-alive connections idle for 5 s) each poll every 10 s with ``If-None-Match`` (20
   requests/s) for 60 s (15 s); every answer must be 200 or 304.
3. Caseload of a 5,000-client clinic: the documented maximum page (1,000 rows, 200, no
   ``If-None-Match``), 40 requests (10), server duration and wall time; and the whole list
   through its five pages.
4. Rescoring: ``POST /v1/risk`` at c=1 for 15 s (5 s) as the baseline, then the champion alias
   moves to version 2 and ``POST /v1/risk`` keeps being timed until the lease row says the
   rescoring is done; the rescoring's own time is the lease row's finished - started (in
   ``process`` mode the server takes the lease before it spawns the child, so this includes
   the child's start: imports and loading the model).

``python -m benchmarks.bench_store --only rescore [--quick] [--modes thread,process]`` runs
part 4 alone, once per rescoring mode (``ALLIANCE_RISK_RESCORE_MODE``), each on a fresh store
and server, for a comparison within one run.

Targets (issue 21), reported and never asserted: 304 server p50 < 1 ms; 0 errors polling;
5,000-client caseload (1,000-row page) p50 <= 50 ms; rescoring 100,000 episodes <= 60 s.
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import insert, select

from benchmarks._harness import Target, provenance
from benchmarks._servers import HOST, free_port, memory_mb, server
from benchmarks.bench_service import BIN, MODEL_NAME, SEED, _server_env, _train_and_promote
from service.store.db import Store
from service.store.tables import episodes, rescore_state, risk_scores, sessions
from tests.service.helpers import request_for
from training.simulate import Cohort, simulate_cohort

CLINICS = 20
POLLERS = 200
POLL_EVERY_S = 10.0
CASELOAD = "/v1/clinics/{clinic}/caseload"
PAGE = 1000
FULL = {"cohort": 5_000, "episodes": 100_000, "calls_304": 2_000, "poll_s": 60,
        "pages": 40, "baseline_s": 15}  # fmt: skip
QUICK = {"cohort": 2_000, "episodes": 10_000, "calls_304": 300, "poll_s": 15,
         "pages": 10, "baseline_s": 5}  # fmt: skip
TARGET_304_MS = 1.0
TARGET_CASELOAD_MS = 50.0
TARGET_RESCORE_S = 60.0
CHUNK = 50_000


def _clinic(i: int) -> str:
    return f"bench-{i:02d}"


def _seed(store: Store, cohort: Cohort, n: int) -> dict[str, float]:
    """``n`` open episodes over :data:`CLINICS` clinics, with appointments, a version-1 score
    ten days old as the latest, and the lease done for version 1. Returns seconds per step."""
    t0 = time.perf_counter()
    elements = cohort.profile.element_names
    s = cohort.sessions.sort_values(["client_id", "session_number"])
    ratings = s[[f"alliance_{e}" for e in elements]].to_numpy()
    templates: dict[str, list[dict[str, Any]]] = {}
    for cid, k, d, a, r in zip(
        s["client_id"], s["session_number"], pd.to_datetime(s["session_date"]).dt.date,
        s["attendance"], ratings, strict=True,
    ):  # fmt: skip
        rated = {e: float(v) for e, v in zip(elements, r, strict=True) if v == v}
        templates.setdefault(cid, []).append({"session_number": int(k), "session_date": d,
                                              "attendance": a, "ratings": rated or None})  # fmt: skip
    base_ids = list(templates)
    c = cohort.clients.set_index("client_id")
    intake = dict(zip(c.index, pd.to_datetime(c["intake_date"]).dt.date, strict=True))
    age = dict(zip(c.index, c["age"].astype(int), strict=True))
    rng = np.random.default_rng(SEED)
    p = rng.beta(2, 8, n)
    old = datetime.now(UTC) - timedelta(days=10)
    built = time.perf_counter()
    with store.write() as conn:
        conn.execute(insert(rescore_state).values(
            name="champion", model_name=MODEL_NAME, model_version="1", done=True,
            after_episode_id=0, rescored=0))  # fmt: skip
        for lo in range(0, n, CHUNK):
            rows: list[dict[str, Any]] = []
            appts: list[dict[str, Any]] = []
            scores: list[dict[str, Any]] = []
            for j in range(lo, min(n, lo + CHUNK)):
                cid = base_ids[j % len(base_ids)]
                i = j + 1
                band = "high" if p[j] >= 0.35 else "moderate" if p[j] >= 0.15 else "low"
                rows.append({
                    "id": i, "clinic_id": _clinic(j % CLINICS), "client_id": f"b{j:06d}",
                    "therapist_id": f"t-{j % 97:02d}", "intake_date": intake[cid], "age": int(age[cid]),
                    "gender": None, "referral_source": None, "outcome": None, "created_at": old,
                    "updated_at": old, "latest_score_id": i, "latest_probability": float(p[j]),
                    "latest_band": band, "latest_model_version": "1", "latest_scored_at": old,
                    "latest_top_driver": "2 no-shows in the last 3 appointments",
                })  # fmt: skip
                scores.append({
                    "id": i, "episode_id": i, "model_name": MODEL_NAME, "model_version": "1",
                    "scored_at": old, "landmark": len(templates[cid]),
                    "probability": float(p[j]), "band": band,
                    "top_driver": "2 no-shows in the last 3 appointments", "explanation": {},
                    "reason": "ingest",
                })  # fmt: skip
                appts.extend({**t, "episode_id": i, "updated_at": old} for t in templates[cid])
            conn.execute(insert(episodes), rows)
            conn.execute(insert(sessions), appts)
            conn.execute(insert(risk_scores), scores)
        from service.store.repository import bump_clinic

        for k in range(CLINICS):
            bump_clinic(conn, _clinic(k))
    return {"build_s": round(built - t0, 2), "insert_s": round(time.perf_counter() - built, 2)}


def _server_durations(log: Path, route: str, status: int) -> list[float]:
    """``duration_ms`` of the access-log lines of ``route`` answered ``status``."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"request"' not in line or route not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("route") == route and doc.get("status") == status:
            out.append(float(doc["duration_ms"]))
    return out


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[int, str]:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status, resp.headers.get("ETag", "")


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else values * 19
    return {"n": len(values), "min": round(min(values), 3),
            "p50": round(statistics.median(values), 3), "p95": round(q[18], 3)}  # fmt: skip


def _sequential_get(port: int, path: str, headers: dict[str, str], n: int,
                    expect: int) -> list[float]:  # fmt: skip
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = _get(conn, path, headers)
            times.append((time.perf_counter() - t0) * 1e3)
            if status != expect:
                raise RuntimeError(f"GET {path} answered {status}, expected {expect}")
    finally:
        conn.close()
    return times


def _poll(port: int, tokens: list[str], duration_s: float) -> dict[str, Any]:
    """Each token's clinic polls every POLL_EVERY_S with If-None-Match (a new connection each
    time), staggered evenly; 8 threads share the clinics."""
    statuses: dict[str, int] = {}
    wall: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    def worker(mine: list[int]) -> None:
        tags: dict[int, str] = {}
        due = {k: start + POLL_EVERY_S * k / len(tokens) for k in mine}
        while True:
            k = min(due, key=due.__getitem__)
            if due[k] > start + duration_s:
                return
            time.sleep(max(0.0, due[k] - time.monotonic()))
            headers = {"Authorization": f"Bearer {tokens[k]}"}
            if k in tags:
                headers["If-None-Match"] = tags[k]
            clinic = _clinic(k) if k < CLINICS else f"poll-{k:03d}"
            # A new connection per poll, as a poller every 10 s has: the server closes
            # keep-alive connections idle for 5 s.
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
            t0 = time.perf_counter()
            try:
                status, tag = _get(conn, CASELOAD.format(clinic=clinic), headers)
                tags[k] = tag or tags.get(k, "")
                key = str(status)
            except (OSError, http.client.HTTPException) as exc:
                key = type(exc).__name__
            finally:
                conn.close()
            with lock:
                statuses[key] = statuses.get(key, 0) + 1
                wall.append((time.perf_counter() - t0) * 1e3)
            due[k] += POLL_EVERY_S

    threads = [threading.Thread(target=worker, args=(list(range(i, len(tokens), 8)),))
               for i in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = sum(n for k, n in statuses.items() if k not in ("200", "304"))
    return {"statuses": statuses, "errors": errors, "requests": sum(statuses.values()),
            "requests_per_s": round(sum(statuses.values()) / duration_s, 2),
            "wall_ms": _stats(wall)}  # fmt: skip


def _risk_loop(port: int, body: bytes, headers: dict[str, str],
               until: Any) -> list[float]:  # fmt: skip
    """POST /v1/risk at c=1 until ``until()`` is true; wall ms of each (200 only)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    out = []
    try:
        while not until():
            t0 = time.perf_counter()
            conn.request("POST", "/v1/risk", body=body,
                         headers={"Content-Type": "application/json", **headers})  # fmt: skip
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST /v1/risk answered {resp.status}")
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        conn.close()
    return out


def _lease(store: Store) -> Any:
    with store.read() as conn:
        return conn.execute(select(rescore_state)).one()


def _rescore_phase(port: int, store: Store, registry: Any, risk_body: bytes,
                   big: dict[str, str], sizes: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """POST /v1/risk at c=1 for the baseline, the alias moved to version 2, and POST /v1/risk
    timed until the lease row says version 2 is done."""
    deadline = time.monotonic() + sizes["baseline_s"]
    baseline = _risk_loop(port, risk_body, big, lambda: time.monotonic() > deadline)
    registry.set_registered_model_alias(MODEL_NAME, "champion", "2")
    moved = time.monotonic()

    def rescored() -> bool:
        row = _lease(store)
        return row.model_version == "2" and bool(row.done)

    during = _risk_loop(port, risk_body, big, lambda: rescored()
                        or time.monotonic() - moved > 900)  # fmt: skip
    lease = _lease(store)
    took = (lease.finished_at - lease.started_at).total_seconds() if lease.done else None
    return {
        "episodes": sizes["episodes"], "rescored": lease.rescored, "done": lease.done,
        "seconds": None if took is None else round(took, 2),
        "alias_move_to_done_s": round(time.monotonic() - moved, 2),
        "risk_ms_baseline": _stats(baseline), "risk_ms_during": _stats(during),
    }  # fmt: skip


def run_rescore_only(quick: bool, modes: list[str]) -> dict[str, Any]:
    """Part 4 alone, once per ``ALLIANCE_RISK_RESCORE_MODE`` in ``modes`` (a fresh store and
    server each, the alias back on version 1), so modes compare within one run."""
    import mlflow
    from mlflow import MlflowClient

    from service.auth import mint_dev_token

    sizes = QUICK if quick else FULL
    result: dict[str, Any] = {"provenance": provenance(), "sizes": sizes, "modes": {}}
    cohort = simulate_cohort(sizes["cohort"], seed=SEED)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        uri, result["setup_s"] = _train_and_promote(cohort, tmp, quick)
        mlflow.set_tracking_uri(uri)
        registry = MlflowClient(uri, uri)
        v1 = registry.get_model_version(MODEL_NAME, "1")
        registry.create_model_version(MODEL_NAME, str(v1.source), run_id=v1.run_id)
        big = {"Authorization": "Bearer " + mint_dev_token(_clinic(0), ("risk:read",),
                                                           key_dir=tmp / "dev-keys")}  # fmt: skip
        cid = str(cohort.clients["client_id"].iloc[0])
        risk_body = json.dumps(request_for(cohort, cid, clinic=_clinic(0))).encode()
        for mode in modes:
            registry.set_registered_model_alias(MODEL_NAME, "champion", "1")
            store_url = f"sqlite:///{tmp / f'store-{mode}.db'}"
            store = Store(store_url)
            store.ensure_ready()
            _seed(store, cohort, sizes["episodes"])
            env = {**_server_env(uri, tmp), "ALLIANCE_RISK_STORE_URL": store_url,
                   "ALLIANCE_RISK_POLL_INTERVAL_S": "1", "ALLIANCE_RISK_RESCORE_MODE": mode}  # fmt: skip
            port = free_port()
            cmd = [str(BIN / "alliance-risk"), "serve", "--no-bootstrap",
                   "--model", f"models:/{MODEL_NAME}@champion", "--poll-interval", "1",
                   "--host", HOST, "--port", str(port), "--workers", "1"]  # fmt: skip
            with server(f"store-{mode}", cmd, env=env, cwd=tmp, ready_path="/readyz", port=port):
                result["modes"][mode] = _rescore_phase(port, store, registry, risk_body, big,
                                                       sizes)  # fmt: skip
            store.close()
    return result


def run(quick: bool) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from service.auth import mint_dev_token

    sizes = QUICK if quick else FULL
    started = provenance()
    cohort = simulate_cohort(sizes["cohort"], seed=SEED)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        uri, setup_s = _train_and_promote(cohort, tmp, quick)
        mlflow.set_tracking_uri(uri)
        registry = MlflowClient(uri, uri)
        v1 = registry.get_model_version(MODEL_NAME, "1")
        registry.create_model_version(MODEL_NAME, str(v1.source), run_id=v1.run_id)
        store_url = f"sqlite:///{tmp / 'store.db'}"
        store = Store(store_url)
        store.ensure_ready()
        seeded = _seed(store, cohort, sizes["episodes"])
        keys = tmp / "dev-keys"
        scopes = ("clients:read", "risk:read")
        tokens = [mint_dev_token(_clinic(k) if k < CLINICS else f"poll-{k:03d}", scopes,
                                 key_dir=keys) for k in range(POLLERS)]  # fmt: skip
        big = {"Authorization": f"Bearer {tokens[0]}"}
        cid = str(cohort.clients["client_id"].iloc[0])
        risk_body = json.dumps(request_for(cohort, cid, clinic=_clinic(0))).encode()
        env = {
            **_server_env(uri, tmp),
            "ALLIANCE_RISK_STORE_URL": store_url,
            "ALLIANCE_RISK_POLL_INTERVAL_S": "1",
            "ALLIANCE_RISK_LOG_LEVEL": "INFO",
        }
        port = free_port()
        cmd = [
            str(BIN / "alliance-risk"), "serve", "--no-bootstrap",
            "--model", f"models:/{MODEL_NAME}@champion", "--poll-interval", "1",
            "--host", HOST, "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        route = "/v1/clinics/{clinic_id}/caseload"
        result: dict[str, Any] = {"provenance": started, "sizes": sizes, "setup_s": setup_s,
                                  "seed": seeded}  # fmt: skip
        with server("store-1w", cmd, env=env, cwd=tmp, ready_path="/readyz", port=port) as srv:
            log = tmp / "store-1w.log"
            path = CASELOAD.format(clinic=_clinic(0))
            # 1. 304s.
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            _, etag = _get(conn, path, big)
            conn.close()
            before = len(_server_durations(log, route, 304))
            wall_304 = _sequential_get(port, path, {**big, "If-None-Match": etag},
                                       sizes["calls_304"], 304)  # fmt: skip
            server_304 = _server_durations(log, route, 304)[before:]
            result["not_modified"] = {"server_ms": _stats(server_304),
                                      "wall_ms": _stats(wall_304)}  # fmt: skip
            # 2. 200 clinics polling.
            result["polling"] = _poll(port, tokens, sizes["poll_s"])
            # 3. The 5,000-client caseload: the 1,000-row page, and the whole list.
            before = len(_server_durations(log, route, 200))
            wall_page = _sequential_get(port, f"{path}?limit={PAGE}", big, sizes["pages"], 200)
            server_page = _server_durations(log, route, 200)[before:]
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            full_ms, rows, cursor = [], 0, None
            for _ in range(3):
                t0, rows, cursor = time.perf_counter(), 0, ""
                while cursor is not None:
                    q = f"{path}?limit={PAGE}" + (f"&cursor={cursor}" if cursor else "")
                    conn.request("GET", q, headers=big)
                    page = json.loads(conn.getresponse().read())
                    rows += len(page["items"])
                    cursor = page["next_cursor"]
                full_ms.append((time.perf_counter() - t0) * 1e3)
            conn.close()
            result["caseload"] = {"page_rows": PAGE, "server_ms": _stats(server_page),
                                  "wall_ms": _stats(wall_page),
                                  "whole_list": {"rows": rows, "pages": -(-rows // PAGE),
                                                 "wall_ms": _stats(full_ms)}}  # fmt: skip
            # 4. Rescoring after a promotion, with POST /v1/risk timed before and during.
            result["rescore"] = _rescore_phase(port, store, registry, risk_body, big, sizes)
            result["server_memory"] = memory_mb(srv.proc.pid)
        store.close()
    n304 = result["not_modified"]["server_ms"]
    page = result["caseload"]["server_ms"]
    r = result["rescore"]
    seconds = r["seconds"] if r["seconds"] is not None else float("inf")
    result["targets"] = {
        "caseload_304_server_p50": Target(
            goal=f"304 on the caseload: server time p50 < {TARGET_304_MS:g} ms", unit="ms",
            min=n304["min"], median=n304["p50"], judged_on="median (access-log duration_ms)",
            met=n304["p50"] < TARGET_304_MS).as_dict(),
        "polling_errors": Target(
            goal=f"{POLLERS} clinics polling every {POLL_EVERY_S:g} s held by one worker with 0 "
            "errors", unit="errors", min=result["polling"]["errors"],
            median=result["polling"]["errors"], judged_on="total",
            met=result["polling"]["errors"] == 0).as_dict(),
        "caseload_5000_p50": Target(
            goal=f"caseload of a 5,000-client clinic ({PAGE}-row page, 200): p50 <= "
            f"{TARGET_CASELOAD_MS:g} ms", unit="ms", min=page["min"], median=page["p50"],
            judged_on="median (access-log duration_ms)",
            met=page["p50"] <= TARGET_CASELOAD_MS).as_dict(),
        "rescore_s": Target(
            goal=f"rescoring {sizes['episodes']:,} stored open episodes <= "
            f"{TARGET_RESCORE_S:g} s", unit="s", min=seconds, median=seconds,
            judged_on="one run (lease finished - started)",
            met=seconds <= TARGET_RESCORE_S).as_dict(),
    }  # fmt: skip
    result["all_targets_met"] = all(t["met"] for t in result["targets"].values())
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_store")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (10,000 episodes)")
    parser.add_argument("--only", choices=["rescore"], help="part 4 alone, once per mode")
    parser.add_argument(
        "--modes",
        default="thread,process",
        help="rescore modes to compare with --only rescore (comma-separated)",
    )
    args = parser.parse_args()
    if args.only == "rescore":
        out = run_rescore_only(args.quick, args.modes.split(","))
    else:
        out = run(args.quick)
    print(json.dumps(out, indent=2, default=str))
