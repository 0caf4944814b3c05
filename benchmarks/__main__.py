"""Run every ``benchmarks/bench_*.py`` (or those named on the command line) and save the results.

Each module exposes ``run(quick: bool) -> dict`` returning JSON-serialisable figures, printed
and written to ``benchmarks/results/<name>.json``; its ``targets`` (each goal with its figure,
min and median, and whether it is met) are listed again at the end. Each runs in its own process
so that peak memory figures are per benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


#: Run only when named: bench_calibration trains ten models.
OPT_IN = frozenset({"bench_calibration"})


def _names() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(HERE)])
        if m.name.startswith("bench_") and m.name not in OPT_IN
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark names (default: all), e.g. features")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    if args.child:
        module = importlib.import_module(f"benchmarks.{args.child}")
        result = module.run(quick=args.quick)
        (out_dir / f"{args.child}.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str))
        return 0
    names = [n if n.startswith("bench_") else f"bench_{n}" for n in args.names] or _names()
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        cmd = [sys.executable, "-m", "benchmarks", "--child", name]
        if subprocess.call(cmd + (["--quick"] if args.quick else [])) != 0:
            failed.append(name)
    print("== targets (figures reported, never asserted)")
    for name in names:
        if name in failed:
            print(f"{name}: FAILED")
            continue
        targets = json.loads((out_dir / f"{name}.json").read_text()).get("targets", {})
        for key, t in targets.items():
            verdict = "met" if t["met"] else "NOT met"
            print(f"{name} {key}: median {t['median']:g}, min {t['min']:g} {t['unit']} "
                  f"({t['goal']}): {verdict}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
