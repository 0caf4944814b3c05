"""The Dask engine against the single-process (pandas) engine: features and training.

Both read the same Parquet dataset (written chunk by chunk from the simulator, so the driver
never holds the whole cohort), validate it, build the landmark features, draw the splits and fit
the booster with the same search (``TRIALS`` trials); the Dask side also gathers its held-out
clients to the driver (capped). Calibration and evaluation are left out: they run on the
gathered held-out clients in either engine.

* ``ratio``: at ``ratio_clients`` (100k; 5k with ``--quick``), wall time through Dask
  (LocalCluster on 127.0.0.1, 2 workers x 1 thread; cluster start not timed, reported apart)
  over the single process, min and median over ``repeats`` (the two alternate, so that both
  meet the same load). Target: at most 1.5x.
* ``scale``: at ``scale_clients`` (1M, about 12M sessions; 20k with ``--quick``), the same
  through Dask on a fresh 2-worker cluster, with each worker's peak RSS (target: at most 4 GB),
  and the single-process run in a subprocess capped by ``RLIMIT_AS`` (``single_limit_gb``), so
  that it fails instead of taking the machine down: its peak RSS, or where it failed.

Run: ``python -m benchmarks dask`` (full sizes), ``python -m benchmarks dask --quick``, or with
other sizes ``python -m benchmarks.bench_dask --ratio-clients 100000 --scale-clients 1000000``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import ROOT, Target, Timing, provenance
from features.contract import CLIENT_ID
from features.registry import feature_registry
from training.dask_engine import dask_client, fit_dask
from training.landmarks import landmark_set
from training.pipeline import TrainConfig
from training.simulate import simulate_cohort

TARGET_RATIO = 1.5
TARGET_WORKER_MB = 4096.0
TRIALS = 2
#: Clients simulated per chunk (one Parquet part per chunk and table).
CHUNK = 100_000


def write_dataset(n_clients: int, root: Path, *, seed: int = 0) -> dict[str, Path]:
    """Simulate ``n_clients`` in chunks into ``root/sessions/`` and ``root/clients/`` (one part
    per chunk); client ids get the chunk number as prefix so they stay unique."""
    paths = {"sessions": root / "sessions", "clients": root / "clients"}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    done = 0
    for i in range(0, -(-n_clients // CHUNK)):
        n = min(CHUNK, n_clients - done)
        cohort = simulate_cohort(n, seed=seed + i)
        for name, frame in (("sessions", cohort.sessions), ("clients", cohort.clients)):
            ids = f"b{i:03d}-" + frame[CLIENT_ID].astype(str)
            frame.assign(**{CLIENT_ID: ids}).to_parquet(paths[name] / f"part.{i}.parquet",
                                                        index=False)  # fmt: skip
        done += n
        del cohort
    return paths


def single_process(paths: dict[str, Path], config: TrainConfig) -> int:
    """The pandas engine's read, validation, features, splits and fit; landmark rows built."""
    from features.build import pack_frames
    from models.booster import fit_booster
    from training.io import load_cohort

    cohort = load_cohort(paths["sessions"], paths["clients"])
    registry = feature_registry(cohort.profile, include_covariates=config.include_covariates)
    data = landmark_set(pack_frames(cohort.sessions, cohort.clients, cohort.profile),
                        cohort.clients, registry, k_max=config.k_max)  # fmt: skip
    splits = config.splits_of(cohort.clients)
    train, valid = data.subset(splits.train), data.subset(splits.valid)
    fit_booster(train.X, train.y, valid.X, valid.y, feature_names=registry.names,
                search=config.search, n_trials=config.n_trials, seed=config.seed)  # fmt: skip
    return int(data.X.shape[0])


def through_dask(client: Any, paths: dict[str, Path], config: TrainConfig) -> int:
    """The Dask engine's read, validation, features, splits, the gather of the held-out clients
    (at most ``HELD_OUT_CLIENT_CAP`` per split, before the fit so that their partitions can be
    released) and the fit (train + valid rows)."""
    # The gather is timed too (fit_dask does it); the single process holds its held-out rows
    # already, so the comparison stays features + fit against features + fit.
    fitted = fit_dask(client, paths["sessions"], paths["clients"], config=config,
                      gather_limit=sys.maxsize)  # fmt: skip
    return int(fitted.counts.sum())


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM), in MB. Not ``ru_maxrss``: Linux carries that across
    fork and exec, so a worker or child would report at least the driver's peak so far."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _single_in_subprocess(paths: dict[str, Path], limit_gb: float, trials: int) -> dict[str, Any]:
    """The single-process run in a child capped at ``limit_gb`` of address space."""
    limit = int(limit_gb * 1024**3)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, "-m", "benchmarks.bench_dask", "--single", str(paths["sessions"]),
           str(paths["clients"]), "--trials", str(trials)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=cap)
    seconds = time.perf_counter() - started
    if done.returncode == 0:
        return {"ok": True, "limit_gb": limit_gb, **json.loads(done.stdout.splitlines()[-1])}
    tail = (done.stderr or "").strip().splitlines()[-3:]
    return {"ok": False, "limit_gb": limit_gb, "exit_code": done.returncode,
            "seconds": round(seconds, 1), "error_tail": tail}  # fmt: skip


def run(
    quick: bool,
    *,
    ratio_clients: int | None = None,
    scale_clients: int | None = None,
    single_limit_gb: float = 16.0,
) -> dict[str, Any]:
    started = provenance()
    ratio_n = ratio_clients or (5_000 if quick else 100_000)
    scale_n = scale_clients or (20_000 if quick else 1_000_000)
    repeats = 1 if quick else 2
    # Unweighted on both sides: single_process() fits without censoring weights, so the Dask
    # side does too, and the ratio compares features + fit with features + fit.
    config = TrainConfig(n_trials=TRIALS, censoring="exclude")
    root = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    try:
        small = write_dataset(ratio_n, root / "ratio")
        t = time.perf_counter()
        with dask_client(workers=2) as client:
            cluster_s = time.perf_counter() - t
            # Alternated, so that both engines meet the same load on a shared machine.
            times: dict[str, list[float]] = {"dask": [], "single": []}
            for _ in range(repeats):
                for name, fn in (("dask", lambda: through_dask(client, small, config)),
                                 ("single", lambda: single_process(small, config))):  # fmt: skip
                    gc.collect()
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        dask_t, single_t = (
            Timing(name, repeats, min(v), statistics.median(v)) for name, v in times.items()
        )
        ratio_min, ratio_median = (1 / r for r in dask_t.ratio(single_t))

        t = time.perf_counter()
        big = write_dataset(scale_n, root / "scale", seed=1_000)
        write_s = time.perf_counter() - t
        with dask_client(workers=2) as client:
            t = time.perf_counter()
            rows = through_dask(client, big, config)
            scale_s = time.perf_counter() - t
            workers_mb = sorted(client.run(_peak_rss_mb).values())
        single = _single_in_subprocess(big, single_limit_gb, TRIALS)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    worst = max(workers_mb)
    targets = {
        "dask_over_single": Target(
            goal=f"Dask features + fit at {ratio_n:,} clients at most {TARGET_RATIO}x the "
            "single process (2 workers x 1 thread against 1 process)",
            unit="x", min=round(ratio_min, 2), median=round(ratio_median, 2),
            judged_on=f"median of {repeats}", met=ratio_median <= TARGET_RATIO,
        ),
        "worker_peak_mb": Target(
            goal=f"peak RSS per worker at most {TARGET_WORKER_MB:g} MB at {scale_n:,} clients",
            unit="MB", min=round(min(workers_mb)), median=round(worst),
            judged_on="the worst worker of one run (reported as median)",
            met=worst <= TARGET_WORKER_MB,
        ),
    }  # fmt: skip
    return {
        "provenance": started,
        "targets": {k: t.as_dict() for k, t in targets.items()},
        "trials": TRIALS,
        "ratio": {
            "clients": ratio_n,
            "dask_s": _t(dask_t),
            "single_s": _t(single_t),
            "dask_over_single": {"min": round(ratio_min, 2), "median": round(ratio_median, 2)},
            "cluster_start_s": round(cluster_s, 1),
        },
        "scale": {
            "clients": scale_n,
            "write_dataset_s": round(write_s, 1),
            "dask_s": round(scale_s, 1),
            "train_valid_landmark_rows": rows,
            "worker_peak_rss_mb": [round(w) for w in workers_mb],
            "driver_peak_rss_mb": round(_peak_rss_mb()),
            "single_process": single,
        },
    }


def _t(timing: Timing) -> dict[str, float]:
    return {"min": round(timing.min_s, 1), "median": round(timing.median_s, 1)}


def _child(sessions: str, clients: str, trials: int) -> None:
    t = time.perf_counter()
    paths = {"sessions": Path(sessions), "clients": Path(clients)}
    rows = single_process(paths, TrainConfig(n_trials=trials, censoring="exclude"))
    print(json.dumps({"seconds": round(time.perf_counter() - t, 1), "landmark_rows": rows,
                      "peak_rss_mb": round(_peak_rss_mb())}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ratio-clients", type=int)
    parser.add_argument("--scale-clients", type=int)
    parser.add_argument("--single-limit-gb", type=float, default=16.0)
    parser.add_argument("--single", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=TRIALS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        _child(*args.single, args.trials)
        return
    result = run(args.quick, ratio_clients=args.ratio_clients,
                 scale_clients=args.scale_clients, single_limit_gb=args.single_limit_gb)  # fmt: skip
    out = Path(__file__).parent / "results" / "bench_dask.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
