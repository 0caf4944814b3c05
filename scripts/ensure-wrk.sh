#!/usr/bin/env bash
# Make sure the `wrk` HTTP load generator is on PATH, installing Debian's `wrk` package if not.
# Idempotent: does nothing when `wrk` is already there. Uses sudo only when not root.
# benchmarks/bench_service.py runs it before its throughput measurements.
set -euo pipefail

if command -v wrk >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "ensure-wrk: wrk not found and apt-get is not available; install wrk by hand" \
        "(https://github.com/wg/wrk)." >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
        echo "ensure-wrk: wrk not found, not root and no sudo; install Debian's 'wrk' package." >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "ensure-wrk: installing Debian's wrk package" >&2
export DEBIAN_FRONTEND=noninteractive
# An out-of-date package index is the usual reason `install` cannot find the package.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends wrk >&2 \
    || { "${SUDO[@]}" apt-get update -qq >&2 \
        && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends wrk >&2; }

if ! command -v wrk >/dev/null; then
    echo "ensure-wrk: installed 'wrk' but it is not on PATH" >&2
    exit 1
fi
