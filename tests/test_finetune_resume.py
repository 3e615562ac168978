"""Crash-safe fine-tuning: a killed run resumes from its checkpoint and ends with the uninterrupted weights."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from recall.errors import RecallError
from recall.training.finetune import FinetuneConfig, checkpoint_folder, finetune

# Dropout on, so that resuming must also restore the RNG to match.
SETTINGS = {"lr": 2e-2, "batch_size": 8, "lora_dropout": 0.1, "seed": 0}


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), "resumed weights differ from the uninterrupted run's"


def checkpoint_step(out: Path) -> int:
    state = checkpoint_folder(out) / "state.pt"
    return torch.load(state, weights_only=True)["step"] if state.is_file() else 0


def test_a_killed_cli_run_resumes_to_the_uninterrupted_weights(work, base, data):
    steps, out = 40, work / "killed"  # killed after its step-10 checkpoint, with 30 steps still to run
    command = [
        sys.executable,
        "-m",
        "recall.cli",
        "finetune",
        "--base",
        str(base),
        "--task",
        "gen_sentiment",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--checkpoint-every",
        "5",
        "--lr",
        "0.02",
        "--batch-size",
        "8",
        "--lora-dropout",
        "0.1",
        "--seed",
        "0",
        "--threads",
        "1",
    ]
    with open(work / "killed.log", "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while checkpoint_step(out) < 10:  # at least one checkpoint replaced by a later one
            assert proc.poll() is None, "finished before it could be killed; make it longer"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()

    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed = re.search(
        rf"^resuming gen_sentiment from step (\d+) of {steps} \(checkpoint .*\.killed\.checkpoint\)$",
        rerun.stderr,
        re.MULTILINE,
    )
    assert resumed and 10 <= int(resumed[1]) < steps, rerun.stderr
    assert not checkpoint_folder(out).exists()

    reference = finetune(
        base, "gen_sentiment", work / "reference", data, FinetuneConfig(max_steps=steps, checkpoint_every=0, **SETTINGS)
    )
    assert_same_weights(out, reference)
    metrics = [json.loads((p / "train_metrics.json").read_text()) for p in (out, reference)]
    assert metrics[0]["steps"] == metrics[1]["steps"]  # every step's loss, those before the kill included
    assert metrics[0]["train_tokens"] == metrics[1]["train_tokens"]


def crash(model):
    raise RuntimeError("crash")


def crash_before_writing(monkeypatch, out: Path, config: FinetuneConfig, base: Path, data: Path) -> None:
    """A run that trains to the end but dies before writing `out`: its last checkpoint stays behind."""
    with monkeypatch.context() as patch:
        patch.setattr("recall.training.finetune.saveable", crash)
        with pytest.raises(RuntimeError, match="crash"):
            finetune(base, "gen_sentiment", out, data, config)
    assert not out.exists() and checkpoint_step(out) == 5


def test_a_checkpoint_of_other_settings_is_ignored(work, base, data, monkeypatch, caplog):
    out = work / "stale"
    crash_before_writing(monkeypatch, out, FinetuneConfig(max_steps=8, checkpoint_every=5, **SETTINGS), base, data)
    config = FinetuneConfig(max_steps=8, checkpoint_every=5, **{**SETTINGS, "lr": 1e-2})
    caplog.set_level(logging.INFO, logger="recall.training.finetune")
    finetune(base, "gen_sentiment", out, data, config)
    assert "ignoring stale checkpoint" in caplog.text and "resuming" not in caplog.text
    assert not checkpoint_folder(out).exists()
    assert_same_weights(out, finetune(base, "gen_sentiment", work / "stale-reference", data, config))


def test_a_checkpoint_follows_the_bases_bytes_not_its_file_times(work, base, data, monkeypatch, caplog):
    """`dvc checkout` restores a base with new file times and the same bytes: the run resumes. A base
    with other bytes at the same path (a rerun upstream stage) starts over."""
    own = Path(shutil.copytree(base, work / "own-base"))
    config = FinetuneConfig(max_steps=8, checkpoint_every=5, **SETTINGS)
    caplog.set_level(logging.INFO, logger="recall.training.finetune")
    crash_before_writing(monkeypatch, work / "touched", config, own, data)
    for f in own.iterdir():
        later = f.stat().st_mtime_ns + 10**12
        os.utime(f, ns=(later, later))
    finetune(own, "gen_sentiment", work / "touched", data, config)
    assert "resuming gen_sentiment from step 5 of 8" in caplog.text

    caplog.clear()
    crash_before_writing(monkeypatch, work / "changed", config, own, data)
    weights = load_file(own / "model.safetensors")
    save_file({k: v + 1e-3 for k, v in weights.items()}, own / "model.safetensors")  # same size, other bytes
    finetune(own, "gen_sentiment", work / "changed", data, config)
    assert "ignoring stale checkpoint" in caplog.text and "resuming" not in caplog.text


def test_checkpoint_every_does_not_change_the_run(work, base, data, monkeypatch, caplog):
    """The fingerprint leaves checkpoint_every out: a rerun with another value (here: off) still resumes."""
    out = work / "every"
    crash_before_writing(monkeypatch, out, FinetuneConfig(max_steps=8, checkpoint_every=5, **SETTINGS), base, data)
    caplog.set_level(logging.INFO, logger="recall.training.finetune")
    finetune(base, "gen_sentiment", out, data, FinetuneConfig(max_steps=8, checkpoint_every=0, **SETTINGS))
    assert "resuming gen_sentiment from step 5 of 8" in caplog.text
    assert not checkpoint_folder(out).exists()
    reference = finetune(
        base,
        "gen_sentiment",
        work / "every-reference",
        data,
        FinetuneConfig(max_steps=8, checkpoint_every=3, **SETTINGS),
    )
    assert_same_weights(out, reference)


def test_negative_checkpoint_every_fails_before_training(work, base, data):
    with pytest.raises(RecallError, match="--checkpoint-every must be >= 0"):
        finetune(base, "gen_sentiment", work / "never", data, FinetuneConfig(checkpoint_every=-1))
