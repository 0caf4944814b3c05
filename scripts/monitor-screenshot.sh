#!/usr/bin/env bash
# Regenerate docs/img/monitor-report.png, the README's monitoring report screenshot.
# Simulates a training cohort and a new cohort in which clinic K02's ratings fall by one point,
# trains a small model in a throwaway MLflow store, runs `alliance-risk monitor` and renders the
# HTML with headless Chromium (Debian's, installed by ensure-tool.sh if missing).
# Usage: scripts/monitor-screenshot.sh [OUTPUT_PNG]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/docs/img/monitor-report.png}"
BIN="$ROOT/.venv/bin"
"$ROOT/scripts/ensure-tool.sh" chromium

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
cd "$WORK"

"$BIN/alliance-risk" simulate --clients 3000 --seed 101 --out train >/dev/null
"$BIN/alliance-risk" simulate --clients 2000 --seed 5 --out new \
    --drift-clinic K02 --rating-shift -1 >/dev/null
"$BIN/alliance-risk" train --sessions train/sessions.csv --clients train/clients.csv \
    --trials 1 >/dev/null
status=0
"$BIN/alliance-risk" monitor --model models:/alliance-risk/1 --sessions new/sessions.csv \
    --clients new/clients.csv --out report || status=$?
if [[ "$status" -gt 1 ]]; then  # 1 is "an alert", which this cohort is built to raise
    echo "monitor-screenshot: alliance-risk monitor failed ($status)" >&2
    exit "$status"
fi

mkdir -p "$(dirname "$OUT")"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1380,2250 --screenshot="$OUT" "file://$WORK/report/monitor.html" 2>/dev/null
echo "wrote $OUT"
