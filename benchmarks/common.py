"""Helpers shared by the benchmarks: synthetic models of a chosen size, child-process measurement, and
what the collectors of pipeline runs (quality.py, protocol.py) record of each run."""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from recall.tracking import git_commit

# The tests' tiny models and tensor writer (tests/helpers.py, not shipped in the package): the
# benchmarks build the same inputs (startup.py its tiny model and Prefect server, random_llama its weights).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import prefect_server, stage_worker, tiny_model, write_tensors  # noqa: E402, F401

# ~243M parameters: about 1 GB in float32. The largest tensors are the 32000 x 1024 embeddings.
LLAMA_1GB = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=14,
    num_attention_heads=16,
    num_key_value_heads=16,
    tie_word_embeddings=False,
)


def random_llama(out: Path, seed: int, **config) -> Path:
    """A Llama checkpoint with random weights, written without ever building the model in memory."""
    if (out / "config.json").is_file():
        return out
    cfg = LlamaConfig(**{**LLAMA_1GB, **config})
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    write_tensors(
        out, ((n, torch.randn(s, generator=gen) * 0.02) for n, s in shapes.items()), max_shard_bytes=512 << 20
    )
    cfg.save_pretrained(out)
    return out


# Child processes report their own resident memory: VmRSS now, VmHWM (the peak) at the end.
CHILD_PRELUDE = """
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
"""

CHILD = (
    CHILD_PRELUDE
    + """import recall.cli, recall.merge.engine, recall.layers, transformers, torch  # the constant part
import matplotlib.pyplot
import recall.commands.merge as command
engine = {}
def timed_merge(*args, _merge=command.merge, **kwargs):  # the engine alone, without CLI start-up
    t = time.perf_counter()
    out = _merge(*args, **kwargs)
    engine["engine_wall_s"] = time.perf_counter() - t
    return out
command.merge = timed_merge
rss0 = status("VmRSS")
t = time.perf_counter()
code = recall.cli.main(sys.argv[1:])
print(json.dumps({"code": code, "wall_s": time.perf_counter() - t, **engine,
                  "rss_after_imports": rss0, "peak_rss": status("VmHWM")}))
"""
)


def run_child(args: list[str]) -> dict:
    """Run `recall ARGS` in a fresh process; its wall time and peak resident memory."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(proc.stderr)
    return result


def machine() -> dict:
    import os

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def command_line() -> str:
    """The running benchmark's command, as typed from the repository root."""
    return shlex.join([".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def run_provenance(folder: Path, **extra) -> dict:
    """Where the results of a pipeline benchmark run come from, for the collectors (quality.py,
    protocol.py): `folder` is benchmarks/<kind>/<name> of the checkout that ran it (`bash
    benchmarks/<kind>/run.sh <name>`). `extra` goes after the params file's hash."""
    lock = folder / "dvc.lock"
    kind = folder.parent.name
    return {
        "checkout": str(folder.parents[2]),
        "params": f"benchmarks/{kind}/{folder.name}/params.yaml",
        "params_sha256": hashlib.sha256((folder / "params.yaml").read_bytes()).hexdigest(),
        **extra,
        "command": f"bash benchmarks/{kind}/run.sh {folder.name}",
        "commit": git_commit(folder),
        "dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None,
        "collected_by": command_line(),
    }


def copy_report(folder: Path, report: Path) -> None:
    """A run's report folder as `report`, replaced whole, with the params.yaml and dvc.lock it ran with."""
    from recall.atomic import MARKER

    shutil.rmtree(report, ignore_errors=True)
    shutil.copytree(folder / "reports", report, ignore=shutil.ignore_patterns(MARKER))  # not a recall output here
    for record in ("params.yaml", "dvc.lock"):
        if (folder / record).is_file():
            shutil.copy2(folder / record, report / record)
