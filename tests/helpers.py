"""Helpers for the tests (and the benchmarks that build the same inputs): tiny random models built in
milliseconds with no download, safetensors written from memory, the CLI called as a function, and a
Prefect server and a warm stage worker for stage processes.

A small byte-level BPE tokenizer is trained on the fly and given a chat template, so chat rendering,
padding and generation work exactly as with a real instruct model; `chat=False` leaves the template
out, as in most pre-trained checkpoints.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from flows.worker import started as stage_worker  # noqa: F401 (for the tests and benchmarks)
from recall.cli import main
from recall.safetensors_io import DTYPE_NAMES, StreamingWriter, TensorInfo

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CORPUS = [
    "The movie was great and the acting was wonderful.",
    "A dull, boring mess of a film. Negative. Positive.",
    "Question: What is the capital of France? Answer: Paris. A B C D",
    "Le chat est sur la table. The cat is on the table.",
    "Read the passage and answer the question. impossible to answer",
] * 4

FAMILIES = {
    "llama": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    "qwen2": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    "mistral": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    "gpt2": dict(model_type="gpt2", n_head=4),
}


def tiny_tokenizer(vocab_size: int = 320, chat: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(
    out: str | Path,
    family: str = "llama",
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
    tie: bool = False,
    chat: bool = True,
    **overrides,
) -> Path:
    """Save a randomly initialised causal LM (+ tokenizer, with a chat template if `chat`) of `family`
    to `out` and return it."""
    tokenizer = tiny_tokenizer(chat=chat)
    kwargs = dict(FAMILIES[family])
    model_type = kwargs.pop("model_type")
    if model_type == "gpt2":
        kwargs.update(n_layer=layers, n_embd=hidden, n_positions=512)
    else:
        kwargs.update(num_hidden_layers=layers, hidden_size=hidden, max_position_embeddings=512)
    kwargs.update(
        vocab_size=len(tokenizer),
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_tensors(folder: str | os.PathLike, tensors: Iterable[tuple[str, torch.Tensor]], **kwargs) -> None:
    """Write a small in-memory state dict with the streaming writer."""
    items = list(tensors)
    infos = {n: TensorInfo(DTYPE_NAMES[t.dtype], tuple(t.shape), t.numel() * t.element_size()) for n, t in items}
    writer = StreamingWriter(folder, infos, **kwargs)
    for name, tensor in items:
        writer.write(name, tensor)
    writer.close()


def run_cli(*args) -> int:
    """`recall ARGS...` in this process; arguments may be paths or numbers."""
    return main([str(a) for a in args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_server(home: Path) -> tuple[subprocess.Popen, dict]:
    """A Prefect server for all stage processes, as scripts/services.sh starts one, its state in
    `home`: the process (terminate it when done) and the environment that points at it."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health")
            return proc, {**env, "PREFECT_API_URL": url}
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the Prefect server did not start in 120 s")
