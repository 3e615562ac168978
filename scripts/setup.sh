#!/usr/bin/env bash
# Create .venv with the pinned stack. Idempotent: does nothing when pyproject.toml and
# constraints.txt are unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, alone: a CPU machine then gets the CPU build and nothing later upgrades it.
.venv/bin/pip install -q -c constraints.txt torch
.venv/bin/pip install -q -c constraints.txt -e ".[test,mergekit]"
echo "$want" > "$stamp"
echo "recall: environment ready in .venv"
