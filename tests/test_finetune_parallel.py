"""Data-parallel fine-tuning: `accelerate launch` of `recall finetune` with two CPU processes (gloo)
trains as one process does on the whole batch; how a batch is shared out."""

import json
import os
import subprocess
import sys

import torch
from helpers import free_port
from safetensors.torch import load_file

from recall.training.finetune import FinetuneConfig, checkpoint_folder, collate, finetune
from recall.training.parallel import Processes

SETTINGS = {"max_steps": 4, "lr": 2e-2, "batch_size": 8, "lora_dropout": 0.0, "seed": 0}


def test_two_processes_under_accelerate_launch_train_as_one(work, base, data):
    """`accelerate launch --cpu` starts one process unless under mpirun, so the test asks for torchrun
    workers (`--multi_gpu`) with the GPUs hidden: recall then sets accelerate up on the CPU, with gloo."""
    out = work / "parallel"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port()), "-m", "recall.cli", "finetune"),
        *("--base", str(base), "--task", "gen_sentiment", "--data-dir", str(data), "--out", str(out)),
        *(*flags, "--checkpoint-every", "2", "--threads", "1"),  # a checkpoint gathers both RNG states
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "2 data-parallel processes" in run.stderr
    assert run.stdout.count("fine-tuned model written to") == 1  # only the main process reports
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not checkpoint_folder(out).exists()
    assert not list(work.glob(".parallel.tmp-*"))

    alone = finetune(base, "gen_sentiment", work / "alone", data, FinetuneConfig(**SETTINGS, checkpoint_every=0))
    together, single = (json.loads((p / "train_metrics.json").read_text()) for p in (out, alone))
    assert (together["processes"], single["processes"]) == (2, 1)
    assert (together["device"], together["dtype"]) == ("cpu", "float32")
    assert together["train_tokens"] == single["train_tokens"]
    # Each step's loss is the two shards' parts summed: the whole batch's only if the shards split it.
    losses = [[s["loss"] for s in m["steps"]] for m in (together, single)]
    torch.testing.assert_close(*losses, rtol=1e-5, atol=1e-5)
    x, y = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (out, alone))
    assert x.keys() == y.keys()
    for name in x:
        torch.testing.assert_close(x[name], y[name], rtol=1e-4, atol=1e-4)


def test_processes_share_out_every_row_once():
    """Contiguous shares, each cut to its own longest row; a process left without rows gets None."""
    from recall.data import Encoded

    lengths = [5, 2, 7, 3, 4]
    items = [Encoded(list(range(1, n + 1)), [-100] + list(range(2, n + 1)), 1) for n in lengths]
    batch = collate(items, pad_id=0)
    cpu = torch.device("cpu")
    assert Processes(0, 1, cpu).shard(batch) is batch
    shards = [Processes(rank, 2, cpu).shard(batch) for rank in range(2)]
    assert [s["input_ids"].shape for s in shards] == [(2, 5), (3, 7)]
    assert torch.cat([s["attention_mask"].sum(1) for s in shards]).tolist() == lengths
    assert torch.equal(shards[1]["labels"], batch["labels"][2:, :7])
    assert [Processes(rank, 8, cpu).shard(batch) is None for rank in range(8)].count(True) == 3
