#!/usr/bin/env bash
# Regenerate docs/img/dashboard-caseload.png and docs/img/dashboard-client.png, the README's
# dashboard screenshots. Runs the browser test (tests/service/test_dashboard_browser.py: a tiny
# model, alliance-risk serve on 127.0.0.1 with a SQLite store seeded through the API, Debian's
# headless Chromium driven by Playwright) with its screenshots written to a scratch folder, and
# copies the 1280x800 ones.
# Usage: scripts/dashboard-screenshot.sh [OUTPUT_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/docs/img}"
"$ROOT/scripts/ensure-tool.sh" chromium

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
DASHBOARD_SCREENSHOTS="$WORK" "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/service/test_dashboard_browser.py >/dev/null
mkdir -p "$OUT"
for name in dashboard-caseload dashboard-client; do
    cp "$WORK/$name.png" "$OUT/$name.png"
    echo "wrote $OUT/$name.png"
done
