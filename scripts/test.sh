#!/usr/bin/env bash
# Set up (idempotent) and run the test suite on two workers (the machine's two cores: the long
# end-to-end tests are chains of one-thread processes). Extra arguments go to pytest, e.g. `-n 0`
# for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/python -m pytest -n "${RECALL_TEST_WORKERS:-2}" --dist loadgroup "$@"
