#!/usr/bin/env bash
# The GPU path against the CPU path on the real SmolLM2-135M-Instruct: a LoRA fine-tune, a RECALL
# merge (features on the device), a likelihood (PPL) and a generation evaluation, once on the CUDA GPU
# (bfloat16, recall's default there) and once on the CPU (float32), with the same inputs and seeds;
# then one table of both results and their differences. About 3-5 minutes on one GPU and 16 cores.
#
#     bash scripts/gpu_check.sh [WORKDIR]        # exit 0: every difference within its tolerance
#
# The base model is `recall base pull`'s (models/base, downloaded from PyPI once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run this on a machine with one" >&2
    exit 2
fi

work=${1:-$(mktemp -d -t recall-gpu-check-XXXX)}
mkdir -p "$work"
echo "gpu_check: working in $work"
recall base pull
recall tasks generate --out "$work/suite" --train 64 --test 16
recall tasks export --task gen_sentiment --data-dir "$work/suite" --limit 32 --out "$work/probe.jsonl"

run_path() {  # $1: cuda or cpu; every command picks the device (and its dtype) itself
    local out="$work/$1" start
    start=$(date +%s)
    recall finetune --base models/base --task gen_sentiment --data-dir "$work/suite" --max-steps 20 \
        --batch-size 4 --max-length 256 --seed 0 --out "$out/expert" --overwrite
    recall merge --method recall --models models/base "$out/expert" --data "$work/probe.jsonl" --typical 8 \
        --out "$out/merged" --overwrite
    recall evaluate --model "$out/merged" --tasks gen_sentiment,gen_translation --data-dir "$work/suite" \
        --limit 16 --max-new-tokens 32 --out "$out/eval" --overwrite
    echo $(($(date +%s) - start)) > "$out/seconds"
}
run_path cuda
CUDA_VISIBLE_DEVICES="" run_path cpu

python - "$work" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np

work = Path(sys.argv[1])
read = lambda *p: json.loads(work.joinpath(*p).read_text())  # noqa: E731
rows, ok = [], True


def row(what, cpu, gpu, tolerance, relative=False):
    """One compared quantity; within: |gpu - cpu| <= tolerance (times |cpu| when relative)."""
    global ok
    diff = abs(gpu - cpu)
    within = diff <= tolerance * (abs(cpu) if relative else 1)
    ok &= within
    bound = f"{tolerance:.0%} of CPU" if relative else f"{tolerance:g}"
    rows.append(f"| {what} | {cpu:.4f} | {gpu:.4f} | {diff:.4f} | {bound} | {'yes' if within else 'NO'} |")


train = {d: read(d, "expert", "train_metrics.json") for d in ("cpu", "cuda")}
assert train["cuda"]["device"].startswith("cuda") and train["cuda"]["dtype"] == "bfloat16", train["cuda"]
assert train["cpu"]["device"] == "cpu" and train["cpu"]["dtype"] == "float32", train["cpu"]
row("fine-tune: first step's loss", train["cpu"]["steps"][0]["loss"], train["cuda"]["steps"][0]["loss"], 0.02, True)
row("fine-tune: final loss (step 20)", train["cpu"]["final_loss"], train["cuda"]["final_loss"], 0.10, True)
weights = {d: np.array(read(d, "merged", "merge_weights.json")["layers"]) for d in ("cpu", "cuda")}
row("RECALL weight of the new model: mean over layers", weights["cpu"][:, 1].mean(), weights["cuda"][:, 1].mean(), 0.02)
worst = int(np.abs(weights["cuda"][:, 1] - weights["cpu"][:, 1]).argmax())
row(f"RECALL weight of the new model: layer {worst} (the largest difference)", weights["cpu"][worst, 1],
    weights["cuda"][worst, 1], 0.05)
metrics = {d: read(d, "eval", "metrics.json") for d in ("cpu", "cuda")}
row("gen_sentiment (PPL): accuracy", metrics["cpu"]["gen_sentiment"]["accuracy"],
    metrics["cuda"]["gen_sentiment"]["accuracy"], 12.5)  # 2 of 16 examples may flip on a near-tie
row("gen_sentiment (PPL): mean answer NLL", metrics["cpu"]["gen_sentiment"]["nll"],
    metrics["cuda"]["gen_sentiment"]["nll"], 0.05, True)
row("gen_translation (generation): BLEU", metrics["cpu"]["gen_translation"]["bleu"],
    metrics["cuda"]["gen_translation"]["bleu"], 10.0)  # greedy replies may part at a bf16 near-tie
seconds = {d: int(work.joinpath(d, "seconds").read_text()) for d in ("cpu", "cuda")}
print()
print("| quantity | CPU float32 | GPU bfloat16 | difference | tolerance | within |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
print(f"| wall seconds (fine-tune, merge, evaluate) | {seconds['cpu']} | {seconds['cuda']} | | | |")
print()
print("gpu_check: GPU and CPU agree within every tolerance" if ok else "gpu_check: a difference exceeds its tolerance")
sys.exit(0 if ok else 1)
EOF
