#!/usr/bin/env bash
# Set up (idempotent) and run the main job: `dvc repro` of the continual-learning sequence in
# params.yaml (default: SmolLM2-135M-Instruct from PyPI on the generated task suite), then print
# the results table and where the MLflow store is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

# One Prefect server for every stage process (each would otherwise start a temporary one, ~12 s).
if [ -z "${PREFECT_API_URL:-}" ]; then
    port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    prefect server start --host 127.0.0.1 --port "$port" > .prefect/server.log 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    export PREFECT_API_URL="http://127.0.0.1:$port/api"
    for _ in $(seq 60); do
        python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health')" "$PREFECT_API_URL" 2>/dev/null && break
        sleep 1
    done
fi

start=$(date +%s)
dvc repro
echo
# the report's tables (a heading is printed only when a table follows it; plots stay in the file)
awk '/^### /{h=$0; next} /^\|/{if(h){print ""; print h; print ""; h=""} print}' reports/report.md
echo
echo "wall time: $(( $(date +%s) - start )) s"
echo "report:    reports/report.md (tables, CSV and PNG plots in reports/); metrics.json (dvc metrics show)"
echo "MLflow:    ${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
echo "           open the UI: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --workers 1"
echo "lineage:   .venv/bin/recall lineage data/steps/$(python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["sequence"][-1]["task"])')/model"
