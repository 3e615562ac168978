#!/usr/bin/env bash
# One protocol suite (task orders x training seeds) through the pipeline users run:
#     bash benchmarks/protocol/run.sh standard [STAGE GLOB...]
# With globs, only those stages and what they need, e.g. SeqFT's first run, then the base's evaluation:
#     bash benchmarks/protocol/run.sh standard 'evaluate-sft-*-o1-s0' evaluate
# Resumable: a rerun (or a killed run started again) takes every finished stage from DVC's cache, and
# an order or seed added to params.yaml runs only its new stages. One-thread lanes (lanes.sh starts
# them): the same command in other checkouts of the same commit sharing the DVC cache, each with its
# own globs, given the others' checkouts in PROTOCOL_LANES (space-separated).
# Models are pruned (`recall prune --finals`, every 5 minutes and at the end) once every stage reading
# them is done in some lane, each chain's newest too once evaluated (the report reads only evaluations;
# dvc.lock keeps every hash), so the suite's ~100 GB of them never sit on the disk at once;
# `--allow-missing` lets dvc repro skip their finished stages. Each start first adopts the lanes'
# finished stages into its dvc.lock.
# Then benchmarks/protocol.py collects the suite's metrics.json into benchmarks/results/protocol.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
suite=${1:?usage: bash benchmarks/protocol/run.sh SUITE [STAGE GLOB...]}
shift
folder=benchmarks/protocol/$suite
[ -f "$folder/params.yaml" ] || { echo "no $folder/params.yaml" >&2; exit 2; }
source benchmarks/repro.sh
lanes=()
for lane in ${PROTOCOL_LANES:-}; do lanes+=(--lane "$lane"); done
prune() { .venv/bin/recall prune "$folder/params.yaml" --finals "${lanes[@]}" "$@"; }
# Adopt the lanes' finished stages (this dvc.lock is written only here, before dvc repro starts): one
# whose model was pruned is then skipped here, not run again; a new lane's checkout, without a dvc.lock
# yet, too (its committed dvc.yaml is the lanes').
[ ${#lanes[@]} -eq 0 ] || [ ! -f "$folder/dvc.yaml" ] || prune --adopt
(while sleep 300 && kill -0 $$ 2>/dev/null; do prune || true; done) &
REPRO_FLAGS=--allow-missing repro "$folder" "$suite" "$@"
prune
[ $# -eq 0 ] || exit 0  # only some stages: nothing to collect yet
python benchmarks/protocol.py "$folder"
