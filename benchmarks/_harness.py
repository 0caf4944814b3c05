"""Tiny timing harness: repeat, report min and median, ratios against a same-run baseline, and
each target with its figure and whether it is met.

The machine is 2 shared, noisy cores, so absolute times drift; a ratio against a baseline
measured in the same run, repeated, is the figure worth comparing across runs.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds over ``repeats`` runs of one callable."""

    name: str
    repeats: int
    min_s: float
    median_s: float

    def ratio(self, baseline: Timing) -> tuple[float, float]:
        """(min ratio, median ratio) of ``baseline`` over ``self``: >1 means self is faster."""
        return baseline.min_s / self.min_s, baseline.median_s / self.median_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(name: str, fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(name, repeats, min(times), statistics.median(times))


def per_call(name: str, fn: Callable[[], object], calls: int, *, warmup: int = 20) -> Timing:
    """Min and median over ``calls`` individually timed calls (for sub-millisecond work, where
    one timer around many calls would hide the spread; no gc.collect between calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(name, calls, min(times), statistics.median(times))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


@dataclass(frozen=True)
class Target:
    """One target of an issue, the figure it is judged on and whether it is met.

    ``min`` and ``median`` are over the runs of the benchmark, in ``unit``; which of them the
    target is judged on is said in ``judged_on``. Reported, never asserted.
    """

    goal: str
    unit: str
    min: float
    median: float
    judged_on: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def provenance() -> dict[str, Any]:
    """What was measured and where: the commit, uncommitted changes, the machine's load."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        # Others work in the same tree: a run may measure their uncommitted changes too.
        "uncommitted_paths": len(git("status", "--porcelain", "--untracked-files=no").splitlines()),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
