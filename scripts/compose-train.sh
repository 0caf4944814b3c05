#!/bin/sh
# Usage: compose-train.sh DATA_DIR
# The compose stack's one-shot trainer (docker-compose.yml, service trainer), against the
# MLflow server in MLFLOW_TRACKING_URI. Exit 0 leaves a champion the API may serve; anything
# else stops the stack's start (the API waits for this job to succeed).
# - DATA_DIR holds sessions.csv and clients.csv (the clinic's export, mounted read-only):
#   - a registered version was already trained on this export (same dataset fingerprint):
#     nothing is trained again, so a restart does not add a version each time;
#   - else train, register, and promote through the gates, never forced. A gate refusal
#     leaves the current champion serving, unless there is none or it is the simulated demo
#     model (then the job fails: real clients are never scored by a model of simulated ones).
#     An export that cannot be read or trained on, or a registry error, fails the job.
# - Otherwise, on a registry without a champion: simulate ALLIANCE_RISK_DEMO_CLIENTS clients
#   (default 10000), train a model tagged simulated, and promote it (with a recorded reason if
#   the gates refuse: a fresh installation has nothing to protect), with a loud warning.
# - Otherwise nothing: a restarted stack keeps its champion.
set -eu

data="${1:?usage: compose-train.sh DATA_DIR}"
clients="${ALLIANCE_RISK_DEMO_CLIENTS:-10000}"
name="alliance-risk"

# Prints "CHAMPION_VERSION CHAMPION_SIMULATED MATCHING_VERSION" ("-" for none); with a data
# folder, MATCHING_VERSION is a version trained on its export (same dataset fingerprint).
# Exit 2: the export cannot be loaded (training reports why); anything else non-zero: the
# registry could not be asked.
registry_state() {
    python - "$name" "$@" <<'PY'
import sys

from mlflow import MlflowClient

from models.pyfunc import resolve_model
from training.runlog import TAG_SIMULATED
from training.tracking import TAG_DATASET_FINGERPRINT

name, folder = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
client = MlflowClient()
champion, simulated = "-", "-"
try:
    champion = str(resolve_model(f"models:/{name}@champion").version)
except LookupError:
    pass
else:
    run_id = client.get_model_version(name, champion).run_id
    tags = client.get_run(run_id).data.tags if run_id else {}
    simulated = tags.get(TAG_SIMULATED, "unknown")
matching = "-"
if folder is not None:
    from training.io import load_cohort
    from training.tracking import dataset_fingerprint

    try:
        cohort = load_cohort(f"{folder}/sessions.csv", f"{folder}/clients.csv")
    except Exception:
        sys.exit(2)
    fingerprint = dataset_fingerprint(cohort.sessions, cohort.clients)
    versions = client.search_model_versions(f"name='{name}'")
    same = [v for v in versions if v.tags.get(TAG_DATASET_FINGERPRINT) == fingerprint]
    if same:
        matching = str(max(int(v.version) for v in same))
print(champion, simulated, matching)
PY
}

warn_simulated() {
    echo "compose-train: ****************************************************************" >&2
    echo "compose-train: WARNING: the model serving /v1/risk was trained on SIMULATED clients." >&2
    echo "compose-train: Its risk estimates say nothing about real clients. Mount the clinic's" >&2
    echo "compose-train: export (ALLIANCE_RISK_DATA_DIR) before scoring real clients." >&2
    echo "compose-train: ****************************************************************" >&2
}

if [ -f "$data/sessions.csv" ] && [ -f "$data/clients.csv" ]; then
    src=0
    state="$(registry_state "$data")" || src=$?
    if [ "$src" -eq 2 ]; then
        state="$(registry_state)" || src=$?
        [ "$src" -eq 2 ] && src=0
    fi
    if [ "$src" -ne 0 ]; then
        echo "compose-train: cannot read the registry at $MLFLOW_TRACKING_URI (exit $src)" >&2
        exit 1
    fi
    set -- $state
    champion="$1" champion_simulated="$2" matching="${3:--}"
    if [ "$matching" != "-" ] && [ "$matching" = "$champion" ]; then
        echo "compose-train: the champion (version $champion) was trained on this export;" \
            "nothing to do" >&2
        exit 0
    fi
    if [ "$matching" = "-" ]; then
        echo "compose-train: training on the mounted data folder" >&2
        trc=0
        alliance-risk train --sessions "$data/sessions.csv" --clients "$data/clients.csv" \
            || trc=$?
        if [ "$trc" -ne 0 ]; then
            echo "compose-train: ERROR: training on the mounted export failed (exit $trc; 1:" \
                "the export breaks the data contract or cannot be trained on, 2: unreadable);" \
                "see the messages above. Nothing was promoted." >&2
            exit 1
        fi
        state="$(registry_state "$data")" || {
            echo "compose-train: cannot read the registry after training" >&2
            exit 1
        }
        set -- $state
        matching="$3"
        prc=0
        alliance-risk promote --name "$name" --version "$matching" || prc=$?
        if [ "$prc" -eq 0 ]; then
            echo "compose-train: version $matching, trained on the mounted export, is the" \
                "champion" >&2
            exit 0
        fi
        if [ "$prc" -ne 1 ]; then
            echo "compose-train: ERROR: promotion could not run (exit $prc)" >&2
            exit 1
        fi
    else
        echo "compose-train: version $matching was already trained on this export and the" \
            "gates did not promote it; not training it again" >&2
    fi
    # The gates refused the export's model.
    if [ "$champion" = "-" ]; then
        echo "compose-train: no model passed the gates and there is no champion to serve" >&2
        exit 1
    fi
    if [ "$champion_simulated" != "false" ]; then
        echo "compose-train: ERROR: the gates refused the model of the clinic's export, and" \
            "the champion (version $champion) is the simulated demo model: it must not score" \
            "real clients. Review the model card, then \`alliance-risk promote --version" \
            "$matching --force --reason TEXT\` or fix the export." >&2
        exit 1
    fi
    echo "compose-train: version $matching was not promoted (gates refused);" \
        "the champion (version $champion) serves" >&2
    exit 0
fi

src=0
state="$(registry_state)" || src=$?
if [ "$src" -ne 0 ]; then
    echo "compose-train: cannot read the registry at $MLFLOW_TRACKING_URI (exit $src)" >&2
    exit 1
fi
set -- $state
champion="$1" champion_simulated="$2"

if [ "$champion" != "-" ]; then
    echo "compose-train: the registry has a champion; no data folder mounted, nothing to do" >&2
    [ "$champion_simulated" = "false" ] || warn_simulated
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
warn_simulated
echo "compose-train: no champion and no data folder: training a DEMO model on $clients" \
    "simulated clients" >&2
alliance-risk simulate --clients "$clients" --seed 7 --out "$work"
alliance-risk train --sessions "$work/sessions.csv" --clients "$work/clients.csv" --simulated
prc=0
alliance-risk promote --name "$name" || prc=$?
if [ "$prc" -eq 1 ]; then
    echo "compose-train: the gates refused the demo model; promoting it with a reason" >&2
    alliance-risk promote --name "$name" --force \
        --reason "first model of a fresh installation, trained on simulated demo data"
elif [ "$prc" -ne 0 ]; then
    echo "compose-train: ERROR: promotion could not run (exit $prc)" >&2
    exit 1
fi
warn_simulated
