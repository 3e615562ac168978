# Sourced by the scripts that run many stage processes: one Prefect server for all of them (each would
# otherwise start a temporary one, ~12 s), stopped when the script exits. Keeps a given PREFECT_API_URL.
if [ -z "${PREFECT_API_URL:-}" ]; then
    port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    prefect server start --host 127.0.0.1 --port "$port" > "$PREFECT_HOME/server.log" 2>&1 &
    prefect_server=$!
    trap 'kill $prefect_server 2>/dev/null || true' EXIT
    export PREFECT_API_URL="http://127.0.0.1:$port/api"
    for _ in $(seq 60); do
        python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health')" "$PREFECT_API_URL" 2>/dev/null && break
        sleep 1
    done
fi
