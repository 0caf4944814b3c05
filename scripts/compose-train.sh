#!/bin/sh
# Usage: compose-train.sh DATA_DIR
# The compose stack's one-shot trainer (docker-compose.yml, service trainer), against the
# MLflow server in MLFLOW_TRACKING_URI.
# - DATA_DIR holds sessions.csv and clients.csv (the clinic's export, mounted read-only): train
#   on them and promote the new version if the promotion gates pass. A refusal leaves the
#   current champion serving; with no champion at all the job fails, and the API does not start.
# - Otherwise, on a registry without a champion: simulate ALLIANCE_RISK_DEMO_CLIENTS clients
#   (default 10000), train, and promote (with a recorded reason if the gates refuse: a fresh
#   installation has nothing to protect), as `alliance-risk serve` bootstraps a local trial.
# - Otherwise nothing: a restarted stack keeps its champion.
set -eu

data="${1:?usage: compose-train.sh DATA_DIR}"
clients="${ALLIANCE_RISK_DEMO_CLIENTS:-10000}"
champion="models:/alliance-risk@champion"

# Exit 0: a champion exists; 3: none yet; anything else: the registry could not be asked.
has_champion() {
    python -c '
import sys
from models.pyfunc import resolve_model
try:
    resolve_model(sys.argv[1])
except LookupError:
    sys.exit(3)
' "$champion"
}

rc=0
has_champion || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
    echo "compose-train: cannot read the registry at $MLFLOW_TRACKING_URI (exit $rc)" >&2
    exit 1
fi

if [ -f "$data/sessions.csv" ] && [ -f "$data/clients.csv" ]; then
    echo "compose-train: training on the mounted data folder" >&2
    if alliance-risk train --sessions "$data/sessions.csv" --clients "$data/clients.csv" \
        --promote; then
        exit 0
    fi
    if [ "$rc" -eq 0 ]; then
        echo "compose-train: the new model was not promoted; the current champion serves" >&2
        exit 0
    fi
    echo "compose-train: no model passed the gates and there is no champion to serve" >&2
    exit 1
fi

if [ "$rc" -eq 0 ]; then
    echo "compose-train: the registry has a champion; no data folder mounted, nothing to do" >&2
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "compose-train: no champion yet; training one on $clients simulated clients" >&2
alliance-risk simulate --clients "$clients" --seed 7 --out "$work"
if ! alliance-risk train --sessions "$work/sessions.csv" --clients "$work/clients.csv" \
    --promote; then
    echo "compose-train: the gates refused the demo model; promoting it with a reason" >&2
    alliance-risk promote --force \
        --reason "first model of a fresh installation, trained on simulated demo data"
fi
