"""Model access: resolve a model spec, read its config cheaply, check compatibility, load it.

A model spec is a local HF folder, a LoRA adapter folder (adapter_config.json), a .gguf file, or a
hub id. Everything here that checks or describes models reads configs only, never weights, so
mistakes surface before gigabytes are loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from recall.atomic import atomic_dir, write_json
from recall.errors import RecallError

log = logging.getLogger(__name__)

COMPAT_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
CACHE = Path(os.environ.get("RECALL_CACHE", Path.home() / ".cache" / "recall"))


@dataclass(frozen=True)
class ModelInfo:
    """What a model spec points at. `base` is set for LoRA adapters (the model they apply to)."""

    spec: str
    path: Path
    kind: str  # "full" | "lora" | "gguf"
    config: object  # transformers.PretrainedConfig
    base: ModelInfo | None = None

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers


def resolve(spec: str | os.PathLike) -> Path:
    """A local path for a model spec; hub ids are downloaded (config and weights) once."""
    path = Path(spec)
    if path.exists():
        return path
    if str(spec).startswith((".", "/")) or os.sep in str(spec).strip("/").split("/", 1)[-1]:
        raise RecallError(f"model {spec} does not exist; give an existing folder, a .gguf file or a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(spec), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:  # hub errors come in many types; all mean the same thing to the user
        raise RecallError(f"model {spec} is not a local path and could not be fetched from the hub ({err})") from None


def describe(spec: str | os.PathLike, base: str | os.PathLike | None = None) -> ModelInfo:
    """Read a model's config (or an adapter's and its base's) without touching weights."""
    from transformers import AutoConfig

    path = resolve(spec)
    if path.is_file() and path.suffix == ".gguf":
        return ModelInfo(str(spec), path, "gguf", AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    if (path / "adapter_config.json").is_file():
        adapter = json.loads((path / "adapter_config.json").read_text())
        base_spec = base or adapter.get("base_model_name_or_path")
        if not base_spec:
            raise RecallError(f"LoRA adapter {spec} names no base model; pass --base")
        base_info = describe(base_spec)
        return ModelInfo(str(spec), path, "lora", base_info.config, base_info)
    if not (path / "config.json").is_file():
        raise RecallError(f"{spec} is not a model: no config.json or adapter_config.json in {path}")
    return ModelInfo(str(spec), path, "full", AutoConfig.from_pretrained(path))


def check_compatible(infos: list[ModelInfo]) -> None:
    """All models must share architecture, depth, width and vocabulary; name the first that differs."""
    ref = infos[0]
    for info in infos[1:]:
        for field in COMPAT_FIELDS:
            a, b = getattr(ref.config, field, None), getattr(info.config, field, None)
            if a != b:
                raise RecallError(
                    f"models are incompatible: {info.spec} has {field}={b} but {ref.spec} has {field}={a}; "
                    "RECALL merges models fine-tuned from the same base"
                )


def load_tokenizer(info: ModelInfo):
    from transformers import AutoTokenizer

    if info.kind == "gguf":
        tok = AutoTokenizer.from_pretrained(info.path.parent, gguf_file=info.path.name)
    else:
        has_own = (info.path / "tokenizer_config.json").is_file() or (info.path / "tokenizer.json").is_file()
        tok = AutoTokenizer.from_pretrained(info.path if has_own or not info.base else info.base.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(info: ModelInfo, dtype: torch.dtype = torch.float32, device: str | None = None):
    """Load a model for inference; LoRA adapters are merged into their base."""
    from transformers import AutoModelForCausalLM

    if info.kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(info.path.parent, gguf_file=info.path.name, dtype=dtype)
    elif info.kind == "lora":
        from peft import PeftModel

        base = load_causal_lm(info.base, dtype)
        model = PeftModel.from_pretrained(base, info.path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(info.path, dtype=dtype)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def safetensors_folder(info: ModelInfo) -> Path:
    """A folder of safetensors weights for the model, converting GGUF or .bin checkpoints once."""
    path = info.path if info.kind != "lora" else info.base.path
    if info.kind != "gguf" and any(path.glob("*.safetensors")):
        return path
    src = info.path if info.kind == "gguf" else path
    key = hashlib.sha256(f"{src.resolve()}:{src.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    out = CACHE / "converted" / f"{src.stem}-{key}"
    if not (out / "config.json").is_file():
        log.info("converting %s to safetensors once (cached at %s)", src, out)
        convert_to_safetensors(info if info.kind == "gguf" else ModelInfo(info.spec, path, "full", info.config), out)
    return out


def saveable(model):
    """A GGUF-loaded model that save_pretrained accepts: it refuses one as "quantized", but once loaded
    the weights are plain dequantised tensors, so dropping the quantizer and its config is enough."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def convert_to_safetensors(info: ModelInfo, out: Path, extra_json: dict[str, dict] | None = None) -> Path:
    """Load a model (dequantising GGUF) and save it as a safetensors HF folder at `out`, atomically,
    with `extra_json` files (name -> content) beside it."""
    model = saveable(load_causal_lm(info, device="cpu"))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(info).save_pretrained(tmp)
        for name, content in (extra_json or {}).items():
            write_json(tmp / name, content)
    return out
