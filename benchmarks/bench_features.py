"""Landmark features: batch throughput and single-client latency against the naive reference.

1. Batch: every landmark for 100,000 simulated clients (~1M sessions; 10,000 with ``--quick``)
   through ``build_features``: min and median of 3 runs, peak RSS of this process, and the naive
   per-client reference (``tests/features/reference.py``) timed on a subsample and scaled up.
2. One client with 12 appointments, latest landmark: ``build_features`` (pandas in, pandas out)
   and the array path (``SessionArrays.single_client`` + ``compute_feature_matrix``, what the API
   will call), median and min over ~1000 calls, against the reference.

Ratios are reference time over ours (> 1 means faster than the naive code).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._harness import Timing, fmt_seconds, measure, peak_rss_mb, per_call
from features.arrays import SessionArrays
from features.build import build_features
from features.kernels import compute_feature_matrix
from features.profiles import ALLIANCE6
from features.registry import feature_registry
from tests.features.reference import reference_features

logger = logging.getLogger(__name__)

TARGET_BATCH_S = 60.0
TARGET_BATCH_RSS_MB = 4096.0
TARGET_SINGLE_MS = 5.0


def _cohort(n_clients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """A simulated cohort (training.simulate when present, else the tests' fast generator)."""
    try:
        from training.simulate import simulate_cohort
    except ImportError:
        from tests.features.strategies import random_cohort

        sessions, clients = random_cohort(n_clients, ALLIANCE6, seed=seed, mean_sessions=11.0)
        return sessions, clients, "tests.features.strategies.random_cohort"
    cohort = simulate_cohort(n_clients, seed=seed, profile=ALLIANCE6)
    return cohort.sessions, cohort.clients, "training.simulate.simulate_cohort"


def _ms(t: Timing) -> dict[str, float]:
    return {"min_ms": round(t.min_s * 1e3, 4), "median_ms": round(t.median_s * 1e3, 4)}


def _single_client(sessions: pd.DataFrame, clients: pd.DataFrame, calls: int) -> dict[str, Any]:
    lengths = sessions.groupby("client_id").size()
    cid = (lengths - 12).abs().idxmin()
    own = sessions[sessions["client_id"] == cid].reset_index(drop=True)
    info = clients[clients["client_id"] == cid].reset_index(drop=True)
    registry = feature_registry(ALLIANCE6)
    hist = own.sort_values("session_number")
    request = {
        "session_number": hist["session_number"].tolist(),
        "session_date": hist["session_date"].dt.date.tolist(),
        "attendance": hist["attendance"].tolist(),
        "ratings": {
            e: [None if np.isnan(v) else v for v in hist[f"alliance_{e}"]]
            for e in ALLIANCE6.element_names
        },
        "intake_date": info["intake_date"].iloc[0].date(),
    }

    def array_path() -> np.ndarray:
        arrays = SessionArrays.single_client(ALLIANCE6, **request)
        return compute_feature_matrix(arrays, registry, np.array([arrays.n_rows - 1]))

    arrays = SessionArrays.single_client(ALLIANCE6, **request)
    last = np.array([arrays.n_rows - 1])
    frame = build_features(own, info, profile=ALLIANCE6, landmarks="latest")
    assert np.array_equal(frame.to_numpy(), array_path(), equal_nan=True)

    pandas_t = per_call(
        "build_features latest",
        lambda: build_features(own, info, profile=ALLIANCE6, landmarks="latest"),
        calls,
    )
    array_t = per_call("single_client + compute_feature_matrix", array_path, calls)
    kernel_t = per_call(
        "compute_feature_matrix only", lambda: compute_feature_matrix(arrays, registry, last), calls
    )
    ref_t = per_call(
        "naive reference latest",
        lambda: reference_features(own, info, profile=ALLIANCE6, landmarks="latest"),
        max(calls // 10, 20),
    )
    out = {
        "sessions": len(own),
        "features": len(registry.names),
        "build_features": _ms(pandas_t),
        "array_path": _ms(array_t),
        "kernel_only": _ms(kernel_t),
        "naive_reference": _ms(ref_t),
        "ratio_build_features_vs_naive": [round(r, 1) for r in pandas_t.ratio(ref_t)],
        "ratio_array_path_vs_naive": [round(r, 1) for r in array_t.ratio(ref_t)],
        "target_median_ms": TARGET_SINGLE_MS,
        "meets_target": pandas_t.median_s * 1e3 <= TARGET_SINGLE_MS,
    }
    logger.info(
        "single client: build_features %s, array path %s (median)",
        fmt_seconds(pandas_t.median_s),
        fmt_seconds(array_t.median_s),
    )
    return out


def _batch(sessions: pd.DataFrame, clients: pd.DataFrame, n_ref: int) -> dict[str, Any]:
    rss_before = peak_rss_mb()
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
    rss_peak = peak_rss_mb()

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
    ref = Timing("naive reference scaled", 1, ref_sub.min_s * scale, ref_sub.median_s * scale)
    return {
        "clients": len(clients),
        "sessions": len(sessions),
        "rows_x_features": list(shape),
        "time_s": {"min": round(ours.min_s, 2), "median": round(ours.median_s, 2)},
        "peak_rss_mb": round(rss_peak, 1),
        "rss_before_features_mb": round(rss_before, 1),
        "naive_reference": {
            "subsample_clients": n_ref,
            "subsample_s": round(ref_sub.min_s, 2),
            "scaled_s": round(ref.min_s, 1),
        },
        "ratio_vs_naive": round(ref.median_s / ours.median_s, 1),
        "target_s": TARGET_BATCH_S,
        "target_rss_mb": TARGET_BATCH_RSS_MB,
        "meets_target": ours.median_s <= TARGET_BATCH_S and rss_peak <= TARGET_BATCH_RSS_MB,
    }


def run(quick: bool) -> dict[str, Any]:
    """Both measurements; sizes shrink with ``quick``."""
    n_clients = 10_000 if quick else 100_000
    t0 = time.perf_counter()
    sessions, clients, source = _cohort(n_clients, seed=7)
    generated_s = time.perf_counter() - t0
    # Single-client latency first, while the heap is small.
    single = _single_client(sessions, clients, calls=300 if quick else 1000)
    batch = _batch(sessions, clients, n_ref=50 if quick else 200)
    return {
        "cohort_source": source,
        "cohort_generation_s": round(generated_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "batch": batch,
        "single_client": single,
    }
