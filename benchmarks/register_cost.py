"""What registering a merged model costs: bytes added to MLflow's artifact store and seconds, per version.

    .venv/bin/python benchmarks/register_cost.py --base /tmp/smolbase [--versions 2]

`recall.tracking.register_model` logs the folder as a transformers-flavour MLflow model, the way the
merge stages do, into a fresh sqlite store whose artifact store (./mlruns) is in a temporary folder.
The same folder is registered `--versions` times, to show that every version carries its own copy.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from common import command_line, machine

from recall import tracking
from recall.atomic import write_json
from recall.base_model import pull_base
from recall.tracking import git_commit


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, default=Path("models/base"), help="SmolLM2 folder (pulled if absent)")
    parser.add_argument("--versions", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "register_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = pull_base(args.base).resolve()
    out = args.out.resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="register-cost-") as tmp:
        os.chdir(tmp)  # MLflow puts the artifact store of a sqlite tracking store in ./mlruns
        store = Path(tmp) / "mlruns"
        mlflow.set_tracking_uri(tracking.tracking_uri(Path(tmp)))
        mlflow.set_experiment("register-cost")
        for i in range(args.versions):
            before = tree_bytes(store) if store.exists() else 0
            with mlflow.start_run(run_name=f"register-{i}"):
                start = time.perf_counter()
                version = tracking.register_model(folder, {"benchmark": "register_cost"}, "register_cost.py")
                seconds = time.perf_counter() - start
            rows.append({"version": version, "store_bytes_added": tree_bytes(store) - before, "seconds": seconds})
            print(rows[-1], flush=True)
    result = {
        "benchmark": "register_cost",
        "command": command_line(),
        "model": str(args.base),
        "model_folder_bytes": tree_bytes(folder),
        "versions": rows,
        "store_bytes_added_per_version": max(r["store_bytes_added"] for r in rows),
        "seconds_per_version": max(r["seconds"] for r in rows),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "versions_of": {"mlflow": mlflow.__version__, "transformers": __import__("transformers").__version__},
        "machine": machine(),
        "commit": git_commit(Path(__file__).parents[1]),
    }
    write_json(out, result)
    print(result)


if __name__ == "__main__":
    main()
