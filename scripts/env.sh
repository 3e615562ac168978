# Sourced by the scripts: the project's venv first on PATH, telemetry off, state in the project.
export PATH="$PWD/.venv/bin:$PATH"
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
mkdir -p "$PREFECT_HOME"
