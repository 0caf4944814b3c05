"""Measure the simulator's trajectory signal for docs/simulator.md ("Trajectory signal").

For each cohort, :func:`training.simulate.trajectory.trajectory_signal`: the test AUROC of a
logistic regression on the early-alliance means plus the attendance group against the same model
on every feature. ``tests/training/simulate/test_deterioration.py``
(``test_trajectory_features_add_auroc_to_early_alliance_and_attendance``) runs the same function
on its 6,000-client cohort (seed 2024), the table's last row.

    python scripts/trajectory_signal.py            # the doc's table, as Markdown rows
    python scripts/trajectory_signal.py --quick    # the test's cohort only
    python scripts/trajectory_signal.py --spread 10  # the test's size at seeds 1..10: gain spread
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from training.simulate import SimulationConfig, simulate_cohort  # noqa: E402
from training.simulate.trajectory import trajectory_signal  # noqa: E402

#: (row label, clients, seed, profile, decline share or None for the default)
COHORTS = (
    ("before the deterioration process (alliance6, 20,000, seed 1)", 20_000, 1, "alliance6", 0.0),
    ("alliance6, 20,000 clients, seed 1", 20_000, 1, "alliance6", None),
    ("alliance6, 20,000 clients, seed 2", 20_000, 2, "alliance6", None),
    ("alliance6, 20,000 clients, seed 3", 20_000, 3, "alliance6", None),
    ("srs, 20,000, seed 1", 20_000, 1, "srs", None),
    ("wai_sr, 20,000, seed 1", 20_000, 1, "wai_sr", None),
    ("alliance6, 6,000 (the test; seed 2024)", 6_000, 2024, "alliance6", None),
)


def trajectory_aurocs(
    n_clients: int, seed: int, profile: str, decline_share: float | None
) -> tuple[float, float]:
    """Test AUROC of (early means + attendance, every feature) on one simulated cohort."""
    config = (
        SimulationConfig()
        if decline_share is None
        else SimulationConfig(decline_share=decline_share)
    )
    cohort = simulate_cohort(n_clients, seed=seed, profile=profile, config=config)
    return trajectory_signal(cohort)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the test's 6,000 clients")
    parser.add_argument(
        "--spread", type=int, default=0, metavar="N",
        help="instead: the gain on 6,000 clients at seeds 1..N (mean, min, max)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.spread:
        gains = []
        for seed in range(1, args.spread + 1):
            early, full = trajectory_aurocs(6_000, seed, "alliance6", None)
            gains.append(full - early)
            print(f"seed {seed}: {early:.3f} {full:.3f} {full - early:+.3f}", flush=True)
        g = np.array(gains)
        print(f"gain over seeds 1..{args.spread}: mean {g.mean():.3f}, min {g.min():.3f}, "
              f"max {g.max():.3f}")  # fmt: skip
        return 0
    print("| cohort | early + attendance | all features | gain |")
    print("|---|---|---|---|")
    for label, n, seed, profile, share in COHORTS[-1:] if args.quick else COHORTS:
        early, full = trajectory_aurocs(n, seed, profile, share)
        print(f"| {label} | {early:.3f} | {full:.3f} | {full - early:+.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
