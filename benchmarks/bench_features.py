"""Landmark features at scale: ``build_features(..., landmarks="all")`` for 100,000 clients.

1. Batch: every landmark of ``simulate_cohort(100_000, seed=7)`` (~1M appointments; 10,000
   clients with ``--quick``) through :func:`features.build.build_features`: min and median of 3
   runs, the peak resident memory while the features are built (the cohort itself excluded: the
   kernel's peak counter is reset after the cohort is made) and the whole process's peak. The
   same-run baseline is the naive per-client reference (``tests/features/reference.py``) timed
   on a subsample and scaled up.
2. One client with 12 appointments, latest landmark, ``build_features`` against the reference
   (the API's path for one client, through the scorer, is timed by ``bench_service``).

Target (issue #7): 100,000 clients, all landmarks, in at most 60 s (with ``--quick``, 10,000 in
at most 6 s). Ratios are reference time over ours (> 1 means faster than the naive code).
"""

from __future__ import annotations

import gc
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks._harness import Target, Timing, measure, peak_rss_mb, per_call, provenance
from features.build import build_features
from features.profiles import ALLIANCE6
from tests.features.reference import reference_features
from training.simulate import simulate_cohort

TARGET_S_PER_100K = 60.0
SEED = 7


def _ms(t: Timing) -> dict[str, float]:
    return {"min": round(t.min_s * 1e3, 4), "median": round(t.median_s * 1e3, 4)}


def _status_mb(key: str) -> float:
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (VmHWM) to its current size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _single_client(sessions: pd.DataFrame, clients: pd.DataFrame, calls: int) -> dict[str, Any]:
    lengths = sessions.groupby("client_id").size()
    cid = (lengths - 12).abs().idxmin()
    own = sessions[sessions["client_id"] == cid].reset_index(drop=True)
    info = clients[clients["client_id"] == cid].reset_index(drop=True)
    ours = per_call(
        "build_features latest",
        lambda: build_features(own, info, profile=ALLIANCE6, landmarks="latest"),
        calls,
    )
    ref = per_call(
        "naive reference latest",
        lambda: reference_features(own, info, profile=ALLIANCE6, landmarks="latest"),
        max(calls // 10, 20),
    )
    return {
        "sessions": len(own),
        "build_features_ms": _ms(ours),
        "naive_reference_ms": _ms(ref),
        "ratio_vs_naive": [round(r, 1) for r in ours.ratio(ref)],
    }


def _batch(sessions: pd.DataFrame, clients: pd.DataFrame, n_ref: int) -> dict[str, Any]:
    gc.collect()
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    frame = build_features(sessions, clients, profile=ALLIANCE6, landmarks="all")
    shape = frame.shape
    del frame
    gc.collect()
    ours = measure(
        "build_features all landmarks",
        lambda: build_features(sessions, clients, profile=ALLIANCE6, landmarks="all"),
        repeats=3,
        warmup=0,
    )
    peak_during = _status_mb("VmHWM") if reset else float("nan")

    ids = clients["client_id"].sample(n_ref, random_state=0)
    sub_s = sessions[sessions["client_id"].isin(ids)]
    sub_c = clients[clients["client_id"].isin(ids)]
    ref_sub = measure(
        "naive reference (subsample)",
        lambda: reference_features(sub_s, sub_c, profile=ALLIANCE6, landmarks="all"),
        repeats=1,
        warmup=0,
    )
    scale = len(clients) / n_ref
    return {
        "clients": len(clients),
        "sessions": len(sessions),
        "rows_x_features": list(shape),
        "time_s": {"min": round(ours.min_s, 2), "median": round(ours.median_s, 2)},
        "rss_before_features_mb": round(rss_before, 1),
        "peak_rss_while_building_mb": round(peak_during, 1),
        "peak_rss_process_mb": round(peak_rss_mb(), 1),
        "naive_reference": {
            "subsample_clients": n_ref,
            "subsample_s": round(ref_sub.min_s, 2),
            "scaled_s": round(ref_sub.min_s * scale, 1),
        },
        "ratio_vs_naive": round(ref_sub.median_s * scale / ours.median_s, 1),
    }


def run(quick: bool) -> dict[str, Any]:
    """Both measurements; sizes shrink with ``quick``."""
    started = provenance()
    n_clients = 10_000 if quick else 100_000
    t0 = time.perf_counter()
    cohort = simulate_cohort(n_clients, seed=SEED, profile=ALLIANCE6)
    generated_s = time.perf_counter() - t0
    sessions, clients = cohort.sessions, cohort.clients
    del cohort
    # Single-client latency first, while the heap is small.
    single = _single_client(sessions, clients, calls=300 if quick else 1000)
    batch = _batch(sessions, clients, n_ref=50 if quick else 200)
    limit_s = TARGET_S_PER_100K * n_clients / 100_000
    target = Target(
        goal=f"build_features(landmarks='all') for {n_clients:,} simulated clients in at most "
        f"{limit_s:g} s (60 s per 100,000)",
        unit="s", min=batch["time_s"]["min"], median=batch["time_s"]["median"],
        judged_on="median of 3 runs", met=batch["time_s"]["median"] <= limit_s,
    )  # fmt: skip
    return {
        "provenance": started,
        "cohort_generation_s": round(generated_s, 1),
        "targets": {"features_all_landmarks_s": target.as_dict()},
        "batch": batch,
        "single_client": single,
        "summary": (
            f"{n_clients:,} clients, all landmarks: median {batch['time_s']['median']} s "
            f"(min {batch['time_s']['min']} s), peak RSS {batch['peak_rss_while_building_mb']} MB "
            f"while building ({batch['rss_before_features_mb']} MB before); "
            f"{batch['ratio_vs_naive']}x the naive reference"
        ),
    }
