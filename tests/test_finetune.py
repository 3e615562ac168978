"""LoRA fine-tuning on tiny random models: learning, which tensors change, outputs, EWC, validation."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from recall.cli import main
from recall.errors import RecallError
from recall.models import default_dtype
from recall.training.finetune import FinetuneConfig, finetune

# initializer_range 0.2: with the default 0.02 a frozen random lm_head caps every logit near 0, so a
# LoRA-only model could not fit anything; larger weights leave it room to learn.
FAST = dict(max_steps=25, lr=2e-2, batch_size=8, lora_dropout=0.0)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls lose to thread synchronisation: on a loaded 2-core machine 2 threads are ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tuned(work, base, data) -> Path:
    return finetune(base, "gen_sentiment", work / "sentiment", data, FinetuneConfig(**FAST))


def test_loss_falls_on_a_learnable_task(tuned):
    metrics = json.loads((tuned / "train_metrics.json").read_text())
    losses = [s["loss"] for s in metrics["steps"]]
    assert [s["step"] for s in metrics["steps"]] == list(range(1, 26))
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
    assert metrics["train_tokens"] > metrics["answer_tokens"] > 0
    assert metrics["tokens_per_s"] > 0 and metrics["examples"] == 64
    assert metrics["config"]["lora_r"] == 8 and metrics["task"] == "gen_sentiment"


def test_device_and_dtype_are_chosen_once_and_recorded(tuned, monkeypatch):
    """No GPU here: the CPU in float32, as always. A GPU gets bfloat16 where it has it (not run here)."""
    metrics = json.loads((tuned / "train_metrics.json").read_text())
    assert (metrics["device"], metrics["dtype"], metrics["processes"]) == ("cpu", "float32", 1)
    assert FinetuneConfig().dtype is None and metrics["config"]["dtype"] == "float32"  # the one trained in
    assert default_dtype("cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert (default_dtype("cuda"), default_dtype(torch.device("cuda", 1)), default_dtype("cpu")) == (
        "bfloat16",
        "bfloat16",
        "float32",
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert default_dtype("cuda") == "float32"


def test_output_is_a_loadable_model_folder_with_adapter(tuned):
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "train_metrics.json",
    ):
        assert (tuned / name).is_file(), name
    adapter = json.loads((tuned / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (8, 32, 0.0)
    assert {name.split(".")[-1] for name in adapter["target_modules"]} == set(LORA_TARGETS)
    assert not list(tuned.parent.glob(".sentiment.tmp-*"))  # the atomic temp folder is gone


def test_only_lora_targeted_tensors_change(base, tuned):
    before, after = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targeted = {k for k in before if k.split(".")[-2] in LORA_TARGETS}
    assert changed == targeted
    assert any("embed_tokens" in k for k in before) and any("norm" in k for k in before)


def test_merged_model_equals_base_plus_adapter(base, tuned):
    from peft import PeftModel

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    merged = AutoModelForCausalLM.from_pretrained(tuned).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tuned / "adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        a, b, c = (m(ids).logits for m in (merged, with_adapter, plain))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)


def test_training_is_seeded(work, base, data, tuned):
    again = finetune(base, "gen_sentiment", work / "again", data, FinetuneConfig(**FAST))
    other = finetune(base, "gen_sentiment", work / "other", data, FinetuneConfig(**FAST, seed=1))
    losses = {
        p: [s["loss"] for s in json.loads((p / "train_metrics.json").read_text())["steps"]]
        for p in (tuned, again, other)
    }
    assert losses[tuned] == losses[again] != losses[other]
    w1, w2 = load_file(tuned / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_sequential_finetuning_with_ewc_limits_drift(work, data, tuned):
    """Step 2 of a task sequence starts from step 1's output; EWC anchored on step 1's task moves less."""
    start = load_file(tuned / "model.safetensors")
    drift = {}
    for strength in (0.0, 1e6):
        config = FinetuneConfig(
            **FAST, ewc_lambda=strength, ewc_from="gen_sentiment" if strength else None, ewc_samples=16
        )
        out = finetune(tuned, "gen_translation", work / f"seq-{strength}", data, config)
        weights = load_file(out / "model.safetensors")
        drift[strength] = sum(float((weights[k] - start[k]).norm() ** 2) for k in start) ** 0.5
        metrics = json.loads((out / "train_metrics.json").read_text())
        assert metrics["base"] == str(tuned)
    ewc = metrics["ewc"]
    assert ewc["from"] == "gen_sentiment" and ewc["samples"] == 16 and ewc["lambda"] == 1e6
    # at B = 0 only the B matrices get gradient: half of the LoRA tensors carry Fisher mass
    assert 0.3 < ewc["fisher_nonzero_fraction"] <= 0.5 and ewc["fisher_max"] > 0
    assert all("ewc_penalty" in s for s in metrics["steps"])
    assert drift[1e6] < 0.6 * drift[0.0]


def test_trains_on_a_prompt_response_jsonl(work, base):
    path = work / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n" for w in ("yes", "no") * 8))
    out = finetune(base, str(path), work / "pairs", None, FinetuneConfig(max_steps=3, batch_size=4))
    assert json.loads((out / "train_metrics.json").read_text())["examples"] == 16


# ---------------------------------------------------------------- validation before training
@pytest.mark.parametrize(
    "task,config,message",
    [
        ("sst9", {}, "unknown task 'sst9'"),
        ("race", {}, r"race/train.jsonl does not exist"),
        ("gen_sentiment", {"max_length": 20}, r"prompts do not fit --max-length 20 .*raise --max-length above"),
        ("gen_sentiment", {"ewc_lambda": 1.0}, "EWC needs both"),
        ("gen_sentiment", {"ewc_lambda": 1.0, "ewc_from": "gen_nothing"}, "unknown task 'gen_nothing'"),
        ("gen_sentiment", {"lr": 0.0}, "--lr must be positive"),
        ("gen_sentiment", {"lora_dropout": 1.0}, "--lora-dropout"),
    ],
)
def test_bad_input_fails_before_training(work, base, data, task, config, message):
    out = work / "never"
    with pytest.raises(RecallError, match=message):
        finetune(base, task, out, data, FinetuneConfig(**config))
    assert not out.exists()


def test_bad_rows_and_empty_split_fail_before_training(work, base):
    root = work / "bad"
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.jsonl").write_text('{"sentence": "good", "label": 1}\n{"label": 0}\n')
    with pytest.raises(RecallError, match=r"sst2/train.jsonl:2: missing field 'sentence'"):
        finetune(base, "sst2", work / "never", root)
    (root / "sst2" / "train.jsonl").write_text("\n")
    with pytest.raises(RecallError, match="no train examples"):
        finetune(base, "sst2", work / "never", root)
    text_only = work / "text.jsonl"
    text_only.write_text('{"text": "no answer here"}\n')
    with pytest.raises(RecallError, match="needs both 'prompt' and a non-empty 'response'"):
        finetune(base, str(text_only), work / "never", None)


def test_base_that_is_not_a_model(work, data):
    with pytest.raises(RecallError, match="is not a model"):
        finetune(work / "data", "gen_sentiment", work / "never", data)


def test_cli(work, base, data, capsys):
    out = work / "cli"
    assert (
        main(
            [
                "finetune",
                "--base",
                str(base),
                "--task",
                "gen_knowledge",
                "--data-dir",
                str(data),
                "--out",
                str(out),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--lora-r",
                "4",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert len(metrics["steps"]) == 2 and metrics["config"]["lora_r"] == 4 and metrics["config"]["seed"] == 3
    assert (
        main(
            [
                "finetune",
                "--base",
                str(base),
                "--task",
                "gen_knowledge",
                "--data-dir",
                str(data),
                "--out",
                str(out),
                "--max-length",
                "8",
            ]
        )
        == 2
    )
    assert "--max-length" in capsys.readouterr().err


def test_a_batch_too_large_for_one_forward_trains_as_micro_batches(work, base, data, monkeypatch):
    """Gradient accumulation over rows gives the batch's own step: same losses and weights."""
    config = FinetuneConfig(**FAST)
    whole = finetune(base, "gen_knowledge", work / "whole", data, config)
    monkeypatch.setattr("recall.training.finetune.FORWARD_TOKENS", 1)  # one row per forward
    split = finetune(base, "gen_knowledge", work / "split", data, config)
    steps = [json.loads((m / "train_metrics.json").read_text())["steps"] for m in (whole, split)]
    assert [s["loss"] for s in steps[0]] == pytest.approx([s["loss"] for s in steps[1]], rel=1e-4)
    a, b, theta0 = (load_file(m / "model.safetensors") for m in (whole, split, base))
    # Summation order differs, so not bit-equal; but the gap is rounding, far below what training moved.
    gap = sum(float((a[n] - b[n]).norm() ** 2) for n in a) ** 0.5
    moved = sum(float((a[n] - theta0[n]).norm() ** 2) for n in a) ** 0.5
    assert moved > 0.1 and gap < 1e-3 * moved


def test_micro_batches_split_rows_and_drop_their_padding():
    from recall.data import IGNORE_INDEX, Encoded
    from recall.training.finetune import collate, micro_batches

    batch = collate([Encoded([1] * n, [IGNORE_INDEX] * (n - 1) + [1], n - 1) for n in (2, 9, 3, 4)], pad_id=0)
    parts = micro_batches(batch, 18)  # width 9: two rows per part
    assert [tuple(p["input_ids"].shape) for p in parts] == [(2, 9), (2, 4)]
    assert micro_batches(batch, 36) == [batch]


def test_large_passes_of_processes_sharing_a_lock_take_turns(tmp_path, monkeypatch):
    """With RECALL_MEMORY_LOCK, a pass larger than a quarter of the machine's memory waits while another
    process holds the lock; a small one never does; unset, nothing waits."""
    import fcntl
    import threading

    from recall.training import memory

    lock = tmp_path / "memory.lock"
    monkeypatch.setenv(memory.LOCK_ENV, str(lock))
    monkeypatch.setattr(memory, "total_memory", lambda: 4 * memory.attention_bytes(2, 100, 1, 1))
    ran = []

    def run(rows):
        with memory.large_pass(rows, 100, 1, 1):
            ran.append(rows)

    with open(lock, "a") as held:  # another open file: flock makes it another holder, as another process
        fcntl.flock(held, fcntl.LOCK_EX)
        run(2)  # exactly a quarter: at once
        large = threading.Thread(target=run, args=(3,))
        large.start()
        large.join(0.5)
        assert large.is_alive() and ran == [2]  # waiting for the lock
        monkeypatch.delenv(memory.LOCK_ENV)
        run(3)  # no lock configured: at once
        assert ran == [2, 3]
    large.join(5)  # the holder closed its file: the large pass runs
    assert not large.is_alive() and ran == [2, 3, 3]


def test_the_memory_lock_changes_nothing_trained(work, base, data, tmp_path, monkeypatch):
    config = FinetuneConfig(**FAST)
    free = finetune(base, "gen_knowledge", work / "free", data, config)
    monkeypatch.setenv("RECALL_MEMORY_LOCK", str(tmp_path / "memory.lock"))
    monkeypatch.setattr("recall.training.memory.total_memory", lambda: 0)  # every pass takes the lock
    locked = finetune(base, "gen_knowledge", work / "locked", data, config)
    a, b = (load_file(m / "model.safetensors") for m in (free, locked))
    assert all(torch.equal(a[n], b[n]) for n in a) and (tmp_path / "memory.lock").exists()
