# Sourced by the scripts that run many stage processes, after every export their stages see: one
# Prefect server for all of them (each would otherwise start a temporary one, ~12 s) and one warm stage
# worker (flows/worker.py: each stage is forked from it instead of importing torch, transformers,
# Prefect and MLflow itself), both stopped when the script exits. Keeps a given PREFECT_API_URL or
# RECALL_STAGE_WORKER (an empty RECALL_STAGE_WORKER: no worker, every stage in its own process).
services=()
services_dir=$(mktemp -d)   # short: a socket's path has at most 107 bytes
trap 'kill "${services[@]}" 2>/dev/null || true; rm -rf "$services_dir"' EXIT
if [ -z "${PREFECT_API_URL:-}" ]; then
    port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    prefect server start --host 127.0.0.1 --port "$port" > "$PREFECT_HOME/server.log" 2>&1 &
    services+=($!)
    export PREFECT_API_URL="http://127.0.0.1:$port/api"
    for _ in $(seq 60); do
        python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health')" "$PREFECT_API_URL" 2>/dev/null && break
        sleep 1
    done
fi
if [ -z "${RECALL_STAGE_WORKER+set}" ]; then
    export RECALL_STAGE_WORKER="$services_dir/stage.sock"
    python -m flows.worker "$RECALL_STAGE_WORKER" &
    services+=($!)
    for _ in $(seq 100); do [ -S "$RECALL_STAGE_WORKER" ] && break; sleep 0.1; done  # listening
fi
