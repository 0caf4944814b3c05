#!/usr/bin/env bash
# Usage: ensure-tool.sh COMMAND [DEBIAN_PACKAGE]
# Make sure COMMAND is on PATH, installing the Debian package (default: COMMAND) if not.
# Idempotent: does nothing when COMMAND is already there. Uses sudo only when not root.
# The benchmarks run it for the tool they drive: wrk (bench_service).
set -euo pipefail

TOOL="${1:?usage: ensure-tool.sh COMMAND [DEBIAN_PACKAGE]}"
PACKAGE="${2:-$TOOL}"

if command -v "$TOOL" >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "ensure-tool: $TOOL not found and apt-get is not available; install $PACKAGE by hand." >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
        echo "ensure-tool: $TOOL not found, not root and no sudo; install Debian's '$PACKAGE'." >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "ensure-tool: installing Debian's $PACKAGE package" >&2
export DEBIAN_FRONTEND=noninteractive
# An out-of-date package index is the usual reason `install` cannot find the package.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$PACKAGE" >&2 \
    || { "${SUDO[@]}" apt-get update -qq >&2 \
        && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$PACKAGE" >&2; }

if ! command -v "$TOOL" >/dev/null; then
    echo "ensure-tool: installed '$PACKAGE' but '$TOOL' is not on PATH" >&2
    exit 1
fi
