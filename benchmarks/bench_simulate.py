"""Simulator throughput: ``simulate_cohort`` for 100,000 clients (10,000 with ``--quick``).

Target (issue #2): 100,000 clients in under 60 s on this machine (2 shared cores).

Two same-run baselines, because absolute times drift on shared cores:

* ``rng_floor``: drawing the same number of raw random numbers with numpy, in the same
  per-slot chunks the simulator uses (uniforms for every client at every slot stepped through,
  normals for every rated session's elements). It is the cost of the randomness alone, so
  ``ratio_to_rng_floor`` (simulator / floor) is the price of everything else: the state
  updates, the rating maths and building the pandas tables.
* ``scaled_small``: the simulator on a tenth of the clients, times ten. ``ratio_to_scaled_small``
  near 1 means the cost grows linearly in clients (vectorised); far above 1 would betray
  per-client Python work or memory pressure.

The dropout-intercept calibration (a pilot cohort, cached per configuration) is timed once,
cold, and excluded from the repeats by the warm-up run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks._harness import Target, fmt_seconds, measure, peak_rss_mb, provenance
from features import contract as c
from training import simulate as sim

SEED = 7
# Path draws per client per slot stepped through (attendance, hazard, rupture, repair,
# terminal misses, repair lag, three for the date gap): see training/simulate.py.
_PATH_UNIFORMS_PER_SLOT = 9


def _rng_floor(n_clients: int, n_slots: int, n_rated: int, n_elements: int) -> None:
    """Draw what the simulator draws, in the same chunk sizes, and nothing else."""
    rng = np.random.default_rng(SEED)
    for _ in range(n_slots):
        for _ in range(_PATH_UNIFORMS_PER_SLOT):
            rng.random(n_clients)
    per_slot = max(1, n_rated // max(n_slots, 1))
    for _ in range(n_slots):
        rng.standard_normal((per_slot, n_elements + 1))
        rng.random(per_slot)


def run(quick: bool) -> dict[str, Any]:
    started = provenance()
    n = 10_000 if quick else 100_000
    profile = "alliance6"
    config = sim.SimulationConfig()

    sim._solve_intercept.cache_clear()
    t0 = time.perf_counter()
    sim.dropout_intercept(config, profile)
    calibration_s = time.perf_counter() - t0

    cohort = sim.simulate_cohort(n, seed=SEED, profile=profile, config=config)
    n_sessions = len(cohort.sessions)
    n_rated = int((cohort.sessions[c.ATTENDANCE] == c.ATTENDED).sum())
    # Slots stepped through = the longest uncensored episode's length, approximated by the
    # longest record seen (censoring can only shorten it).
    n_slots = int(cohort.sessions[c.SESSION_NUMBER].max())
    n_elements = len(cohort.profile.elements)
    del cohort

    full = measure(
        f"simulate_cohort({n:,})",
        lambda: sim.simulate_cohort(n, seed=SEED, profile=profile, config=config),
        repeats=3,
        warmup=1,
    )
    small = measure(
        f"simulate_cohort({n // 10:,}) x 10",
        lambda: sim.simulate_cohort(n // 10, seed=SEED, profile=profile, config=config),
        repeats=3,
        warmup=1,
    )
    floor = measure(
        "numpy rng floor",
        lambda: _rng_floor(n, n_slots, n_rated, n_elements),
        repeats=3,
        warmup=1,
    )
    scaled_small_min, scaled_small_median = 10 * small.min_s, 10 * small.median_s
    limit_s = 60.0 * n / 100_000
    target = Target(
        goal=f"simulate_cohort({n:,}) in under {limit_s:g} s (60 s per 100,000 clients)",
        unit="s", min=round(full.min_s, 3), median=round(full.median_s, 3),
        judged_on=f"median of {full.repeats}", met=full.median_s < limit_s,
    )  # fmt: skip
    result = {
        "provenance": started,
        "targets": {"simulate_s": target.as_dict()},
        "clients": n,
        "sessions": n_sessions,
        "profile": profile,
        "repeats": full.repeats,
        "min_s": round(full.min_s, 3),
        "median_s": round(full.median_s, 3),
        "sessions_per_s": round(n_sessions / full.median_s),
        "clients_per_s": round(n / full.median_s),
        "calibration_cold_s": round(calibration_s, 3),
        "rng_floor_median_s": round(floor.median_s, 3),
        "ratio_to_rng_floor": round(full.median_s / floor.median_s, 2),
        "scaled_small_median_s": round(scaled_small_median, 3),
        "ratio_to_scaled_small": round(full.median_s / scaled_small_median, 2),
        "ratio_to_scaled_small_min": round(full.min_s / scaled_small_min, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "summary": (
            f"{n:,} clients / {n_sessions:,} sessions in {fmt_seconds(full.median_s)} "
            f"(median of {full.repeats}); {full.median_s / floor.median_s:.1f}x the raw RNG "
            f"cost; {full.median_s / scaled_small_median:.2f}x ten runs of {n // 10:,}"
        ),
    }
    return result
