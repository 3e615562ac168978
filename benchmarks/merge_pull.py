"""How far each merge of a sequential benchmark run moves toward its new fine-tune (issue 11, point 7).

At step k a chain fine-tunes its previous model `prev` into `new`, then merges them into `merged`.
Every merge method is then summed up by two numbers over all weights:

    pull     = <merged - prev, new - prev> / |new - prev|^2   (1: the fine-tune itself, SeqFT; 0.5: the
               plain average; below 1 the earlier tasks keep part of the weights)
    off_line = |merged - prev - pull (new - prev)| / |new - prev|   (0 for any interpolation of prev and
               new; TIES and task arithmetic also move elsewhere)

The sequential benchmark's retention is ordered by the new model's weight (benchmarks/ablation.py);
this measures that weight for every method, RECALL's layer-wise weights and the sign- or
magnitude-based baselines alike.

    .venv/bin/python benchmarks/merge_pull.py RUN|NAME=CHAIN [...]

RUN is a benchmarks/paper/sequential folder (every merged chain under its data/chains/), NAME=CHAIN
one chain folder under a name (e.g. a second run's RECALL at another sigma). Writes
benchmarks/results/merge_pull.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402

from recall.tracking import git_commit  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def pull(prev: Path, new: Path, merged: Path) -> dict[str, float]:
    p, n, m = (load_file(folder / "model.safetensors") for folder in (prev, new, merged))
    along = change = moved_sq = 0.0  # one pass: |moved - c d|^2 = |moved|^2 - 2 c <moved, d> + c^2 |d|^2
    for name, tensor in n.items():
        d = (tensor - p[name]).double()
        moved = (m[name] - p[name]).double()
        along += float((moved * d).sum())
        change += float((d * d).sum())
        moved_sq += float((moved * moved).sum())
    coefficient = along / change
    off = max(moved_sq - 2 * coefficient * along + coefficient**2 * change, 0.0)  # rounding can dip below 0
    return {"pull": round(coefficient, 4), "off_line": round((off / change) ** 0.5, 4)}


def chain_pulls(name: str, chain: Path, steps: list[str]) -> dict[str, dict[str, float]]:
    """{step: pull} of one chain. Its merges name their inputs (previous model first, new fine-tune
    last) by absolute path in the run that made them, which may be another checkout sharing DVC's
    cache: they are read from this chain's run."""
    data = chain.parents[1]
    out = {}
    for step in steps:
        record = chain / step / "model" / "merge_weights.json"
        if not record.is_file():  # an unmerged chain (SeqFT, EWC)
            return {}
        prev, *_, new = (data / model.split("/data/", 1)[1] for model in json.loads(record.read_text())["models"])
        out[step] = pull(prev, new, record.parent)
        print(name, step, out[step], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN|NAME=CHAIN")
    args = parser.parse_args()
    chains: dict[str, Path] = {}
    for arg in args.runs:
        name, _, folder = arg.rpartition("=")
        path = Path(folder).resolve()
        if name:
            chains[name] = path
        else:
            chains.update((c.name, c) for c in sorted((path / "data" / "chains").iterdir()))
    run = next(iter(chains.values())).parents[2]
    steps = [s["task"] for s in yaml.safe_load((run / "params.yaml").read_text())["sequence"]]
    pulls = {name: p for name, chain in chains.items() if (p := chain_pulls(name, chain, steps))}
    result = {
        "command": command_line(),
        "commit": git_commit(),
        "chains": {n: str(c) for n, c in chains.items()},
        "steps": steps,
        "pull": pulls,
    }
    (RESULTS / "merge_pull.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {name} | " + " | ".join(f"{p[s]['pull']:.2f} ({p[s]['off_line']:.2f})" for s in steps) + " |"
        for name, p in pulls.items()
    ]
    (RESULTS / "merge_pull.md").write_text(
        "# How far each merge moves toward its new fine-tune\n\n"
        f"`{result['command']}` at {result['commit'][:10]}; per step: pull (off_line), see the script's docstring.\n\n"
        f"| chain | {' | '.join(steps)} |\n|---|{'---|' * len(steps)}\n" + "\n".join(rows) + "\n"
    )
    print(f"wrote {RESULTS / 'merge_pull.md'}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
