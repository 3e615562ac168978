#!/usr/bin/env bash
# One paper benchmark scenario through the pipeline users run (a benchmark is a params file):
#     bash benchmarks/paper/run.sh sequential|single|multi [STAGE GLOB...]
# With globs, only those stages and what they need, e.g. one chain first:
#     bash benchmarks/paper/run.sh sequential 'evaluate-sft-*'
# Resumable: a rerun takes every finished stage from DVC's cache. Then benchmarks/quality.py collects
# every scenario's metrics.json into benchmarks/results/quality.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
scenario=${1:?usage: bash benchmarks/paper/run.sh sequential|single|multi [STAGE GLOB...]}
shift
folder=benchmarks/paper/$scenario
[ -f "$folder/params.yaml" ] || { echo "no $folder/params.yaml; scenarios: $(ls benchmarks/paper | grep -v run.sh | tr '\n' ' ')" >&2; exit 2; }
source benchmarks/repro.sh
repro "$folder" "$scenario" "$@"
[ $# -eq 0 ] || exit 0  # only some stages: nothing to collect yet
python benchmarks/quality.py
