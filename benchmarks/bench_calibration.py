"""Calibration at every landmark (issue 19): train on the simulator, judge on a large external
cohort of the same generator, per landmark.

For each instrument profile x seed, ``train_model`` (default configuration) is fitted on a
cohort of ``N_TRAIN`` clients, then an external cohort of ``N_EXTERNAL`` clients from another
seed is scored by the :class:`~models.scorer.Scorer` in batch (``explain=False``) at its training
landmarks. The external cohort is followed to the end (``simulate_truth``), so every client has
its eventual outcome and censoring does not select whom the figures are about. A last run
trains on a date-censored cohort (``enrolment_days=300``: about a third ongoing at
extraction) and is judged on the same clients' truth.

Per landmark 1..15 and pooled: clients, observed dropout rate, mean predicted, ECE,
calibration-in-the-large (CITL, slope fixed at 1), calibration slope and AUROC, all from
:mod:`training.metrics`. Targets: ECE <= 0.03 and |CITL| <= 0.1 at every landmark 1-10. Not
in the default ``make bench`` set (it trains ten models); run ``python -m benchmarks
calibration``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._harness import provenance
from features.contract import DROPOUT, OUTCOME_CODES
from features.episodes import Episodes
from training.metrics import auroc, calibration_slope_intercept, ece
from training.pipeline import TrainConfig, train_model
from training.simulate import SimulationConfig, simulate_cohort, simulate_truth

N_TRAIN = 5_000  # ~4,300 labelled clients: the training file (~600 calibration clients)
N_EXTERNAL = 20_000
PROFILES = ("alliance6", "srs", "wai_sr")
SEEDS = (1, 2, 3)
EXTERNAL_SEED_OFFSET = 1_000
LANDMARKS = range(1, 16)
TARGET_LANDMARKS = range(1, 11)
MAX_ECE, MAX_ABS_CITL = 0.03, 0.10
CENSORED = SimulationConfig(enrolment_days=300)


def landmark_table(y: np.ndarray, p: np.ndarray, landmark: np.ndarray, client: np.ndarray):
    """One row per landmark (1..15) and ``all``: the figures of the module docstring."""
    rows = []
    for k in [*LANDMARKS, None]:
        mask = np.ones(y.size, bool) if k is None else landmark == k
        yy, pp = y[mask], p[mask]
        slope, citl = calibration_slope_intercept(yy, pp)
        rows.append(
            {
                "landmark": "all" if k is None else k,
                "n_clients": int(pd.unique(client[mask]).size),
                "observed_rate": float(yy.mean()),
                "mean_predicted": float(pp.mean()),
                "ece": ece(yy, pp),
                "citl": citl,
                "slope": slope,
                "auroc": auroc(yy, pp),
            }
        )
    return pd.DataFrame(rows)


def _external(scorer, n: int, seed: int, profile: str, config: SimulationConfig | None):
    """Score the external truth cohort at its training landmarks: (y, p, landmark, client)."""
    truth = simulate_truth(n, seed=seed, profile=profile, config=config)
    episodes = Episodes.from_frames(truth.sessions, truth.clients, scorer.profile)
    scored = scorer.score(episodes, landmarks="training", explain=False)
    outcome = episodes.outcome[scored.episode]
    y = (outcome == OUTCOME_CODES.index(DROPOUT)).astype(float)
    return y, scored.probability, scored.landmark, episodes.client_id[scored.episode]


def _one(profile: str, seed: int, config: SimulationConfig | None, n_train: int, n_ext: int):
    cohort = simulate_cohort(n_train, seed=seed, profile=profile, config=config)
    t = time.perf_counter()
    result = train_model(cohort.sessions, cohort.clients, cohort.profile, TrainConfig(seed=seed))
    train_s = time.perf_counter() - t
    y, p, k, client = _external(result.scorer, n_ext, seed + EXTERNAL_SEED_OFFSET, profile, config)
    table = landmark_table(y, p, k, client)
    target = table[table["landmark"].isin(list(TARGET_LANDMARKS))]
    return {
        "profile": profile,
        "seed": seed,
        "censored": config is not None,
        "train_s": train_s,
        "max_ece_1_10": float(target["ece"].max()),
        "max_abs_citl_1_10": float(target["citl"].abs().max()),
        "met": bool(
            (target["ece"] <= MAX_ECE).all() and (target["citl"].abs() <= MAX_ABS_CITL).all()
        ),
        "table": table.to_dict(orient="records"),
    }


def run(quick: bool) -> dict[str, Any]:
    started = provenance()
    n_train, n_ext = (2_000, 5_000) if quick else (N_TRAIN, N_EXTERNAL)
    seeds = SEEDS[:1] if quick else SEEDS
    # First seed of every profile and the censored cohort first, so a cut-short run still
    # covers each case; each table is printed as soon as its run ends.
    plan = [(profile, seeds[0], None) for profile in PROFILES]
    plan.append(("alliance6", seeds[0], CENSORED))
    plan += [(profile, seed, None) for seed in seeds[1:] for profile in PROFILES]
    runs = []
    for profile, seed, config in plan:
        r = _one(profile, seed, config, n_train, n_ext)
        runs.append(r)
        print(
            f"\n{r['profile']} seed {r['seed']}{' date-censored' if r['censored'] else ''}: "
            f"max ECE 1-10 {r['max_ece_1_10']:.3f}, max |CITL| 1-10 {r['max_abs_citl_1_10']:.3f}"
            f" ({'met' if r['met'] else 'NOT met'}), trained in {r['train_s']:.0f} s",
            flush=True,
        )
        print(pd.DataFrame(r["table"]).round(3).to_string(index=False), flush=True)
    met = [r["met"] for r in runs]
    return {
        "provenance": started,
        "n_train": n_train,
        "n_external": n_ext,
        "runs": runs,
        "targets": {
            "landmarks_calibrated": {
                "goal": f"ECE <= {MAX_ECE} and |CITL| <= {MAX_ABS_CITL} at landmarks 1-10",
                "median": float(np.mean(met)),
                "min": float(min(met)),
                "unit": "share of runs",
                "met": all(met),
            }
        },
    }
