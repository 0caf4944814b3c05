"""Tiny timing harness: repeat, report min and median, and ratios against a same-run baseline.

The machine is 2 shared, noisy cores, so absolute times drift; a ratio against a baseline
measured in the same run, repeated, is the figure worth comparing across runs.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


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
