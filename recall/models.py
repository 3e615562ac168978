"""Model access: resolve a model spec, read its config cheaply, check compatibility, load it.

A model spec is a local HF folder, a LoRA adapter folder (adapter_config.json), a .gguf file, or a
hub id. Everything here that checks or describes models reads configs only, never weights, so
mistakes surface before gigabytes are loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recall.atomic import atomic_dir, write_json
from recall.errors import RecallError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

COMPAT_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
CACHE = Path(os.environ.get("RECALL_CACHE", Path.home() / ".cache" / "recall"))
REMOTE_CODE_FIX = (
    "recall runs no code from a model folder unless you pass --trust-remote-code "
    "(the pipeline: base.trust_remote_code: true in params.yaml) and trust the folder's author"
)
# The user's opt-in to code shipped in model folders, set once by the entry point (`allow_remote_code`);
# every load of a config, tokenizer or model passes it as `trust_remote_code` (via `trusted`).
_remote_code_allowed = False


def allow_remote_code(allowed: bool) -> None:
    global _remote_code_allowed
    _remote_code_allowed = allowed


def remote_code_record() -> dict:
    """What an output's record (merge_weights.json, train_metrics.json, evaluation.json) says of the opt-in."""
    return {"trust_remote_code": True} if _remote_code_allowed else {}


def trusted(where: Path) -> bool:
    """`trust_remote_code` for a load from `where` (a folder or a .gguf file): the user's opt-in. Without it
    a folder whose config or tokenizer config points at code beside it (`auto_map`), or whose architecture
    transformers does not know, is refused here, before anything is loaded."""
    if _remote_code_allowed or not Path(where).is_dir():
        return _remote_code_allowed
    for name in ("config.json", "tokenizer_config.json"):
        if (where / name).is_file() and "auto_map" in read_config(where / name):
            raise RecallError(f"{where}: {name} has `auto_map` (Python code shipped with the model); {REMOTE_CODE_FIX}")
    if (where / "config.json").is_file():
        from transformers import CONFIG_MAPPING

        model_type = read_config(where / "config.json").get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise RecallError(
                f"{where}: config.json's model_type {model_type!r} is no architecture transformers knows, so "
                f"loading it would need code from the folder; {REMOTE_CODE_FIX}"
            )
    return False


def read_config(path: Path) -> dict:
    """A model folder's JSON file, as a mapping; one clear error when it is not one."""
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecallError(f"{path} is not valid JSON ({err}); restore the file from the model's source") from None
    if not isinstance(config, dict):
        raise RecallError(f"{path} holds {type(config).__name__}, not a JSON object; restore it from its source")
    return config


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


PULLED = ["*.json", "*.safetensors", "*.model", "*.txt"]  # what a hub model is fetched with (code only if trusted)


def resolve(spec: str | os.PathLike) -> Path:
    """A local path for a model spec; hub ids are downloaded (config and weights) once."""
    path = Path(spec)
    if path.exists():
        return path
    if str(spec).startswith((".", "/")) or os.sep in str(spec).strip("/").split("/", 1)[-1]:
        raise RecallError(f"model {spec} does not exist; give an existing folder, a .gguf file or a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(spec), allow_patterns=PULLED + (["*.py"] if _remote_code_allowed else [])))
    except Exception as err:  # hub errors come in many types; all mean the same thing to the user
        raise RecallError(f"model {spec} is not a local path and could not be fetched from the hub ({err})") from None


def describe(spec: str | os.PathLike, base: str | os.PathLike | None = None) -> ModelInfo:
    """Read a model's config (or an adapter's and its base's) without touching weights."""
    from transformers import AutoConfig

    path = resolve(spec)
    if path.is_file() and path.suffix == ".gguf":
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trusted(path))
        return ModelInfo(str(spec), path, "gguf", config)
    if (path / "adapter_config.json").is_file():
        adapter = read_config(path / "adapter_config.json")
        base_spec = base or adapter.get("base_model_name_or_path")
        if not base_spec:
            raise RecallError(f"LoRA adapter {spec} names no base model; pass --base")
        base_info = describe(base_spec)
        return ModelInfo(str(spec), path, "lora", base_info.config, base_info)
    if not (path / "config.json").is_file():
        raise RecallError(f"{spec} is not a model: no config.json or adapter_config.json in {path}")
    return ModelInfo(str(spec), path, "full", AutoConfig.from_pretrained(path, trust_remote_code=trusted(path)))


def check_compatible(infos: list[ModelInfo], tokenizers: bool = True) -> None:
    """All models must share architecture, depth, width and vocabulary size, and (unless `tokenizers`
    is False) the tokenizer itself; name the first that differs. Reads configs and tokenizers only."""
    ref = infos[0]
    for info in infos[1:]:
        for field in COMPAT_FIELDS:
            a, b = getattr(ref.config, field, None), getattr(info.config, field, None)
            if a != b:
                raise RecallError(
                    f"models are incompatible: {info.spec} has {field}={b} but {ref.spec} has {field}={a}; "
                    "RECALL merges models fine-tuned from the same base"
                )
    if tokenizers:
        with_tokenizer = [info for info in infos if has_tokenizer(info)]
        if len(with_tokenizer) < len(infos):  # weights-only folders: nothing to compare them by
            log.warning(
                "not comparing tokenizers of %s: no tokenizer files",
                ", ".join(i.spec for i in infos if i not in with_tokenizer),
            )
        for info in with_tokenizer[1:]:
            check_same_tokenizer(with_tokenizer[0], info)


@dataclass(frozen=True)
class TokenizerSummary:
    """What must agree for two models' token ids to mean the same text."""

    tokens: tuple[str, ...]  # by id; "" for an unused id
    special: tuple[tuple[str, str], ...]  # (role, token), e.g. ("eos_token", "<|im_end|>")

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.tokens, self.special]).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _tokenizer_summary(where: Path, stamp: tuple) -> TokenizerSummary:
    tok = load_tokenizer_from(where)
    vocab = tok.get_vocab()
    tokens = [""] * (max(vocab.values(), default=-1) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    special = tuple(sorted((role, str(value)) for role, value in tok.special_tokens_map.items()))
    return TokenizerSummary(tuple(tokens), special)


def tokenizer_summary(info: ModelInfo) -> TokenizerSummary:
    where = tokenizer_source(info)
    files = [where] if where.is_file() else sorted(p for p in where.iterdir() if p.is_file())
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in files)
    return _tokenizer_summary(where, stamp)  # cached: the CLI and the engine both check


def check_same_tokenizer(a: ModelInfo, b: ModelInfo) -> None:
    """Same shapes and vocab_size do not make the same tokenizer (mergekit #47, #139): a merge of models
    whose ids mean different tokens speaks garbage. Compared by content, never by file name."""
    x, y = tokenizer_summary(a), tokenizer_summary(b)
    if x.digest == y.digest:
        return
    fix = "merge models fine-tuned from the same base, or pass --allow-tokenizer-mismatch if you know why they differ"
    for index, (s, t) in enumerate(zip(x.tokens, y.tokens)):
        if s != t:
            raise RecallError(
                f"{a.spec} and {b.spec} have different tokenizers: token id {index} is {s!r} in the "
                f"first and {t!r} in the second; {fix}"
            )
    if len(x.tokens) != len(y.tokens):
        raise RecallError(
            f"{a.spec} and {b.spec} have different tokenizers: {len(x.tokens)} and {len(y.tokens)} tokens; {fix}"
        )
    xs, ys = dict(x.special), dict(y.special)
    role = next(r for r in sorted(xs.keys() | ys.keys()) if xs.get(r) != ys.get(r))
    raise RecallError(
        f"{a.spec} and {b.spec} have different special tokens: {role} is {xs.get(role)!r} in the "
        f"first and {ys.get(role)!r} in the second; {fix}"
    )


def tokenizer_source(info: ModelInfo) -> Path:
    """Where a model's tokenizer lives: its own folder (or .gguf file), or an adapter's base's."""
    if info.kind == "gguf":
        return info.path
    has_own = (info.path / "tokenizer_config.json").is_file() or (info.path / "tokenizer.json").is_file()
    return info.path if has_own or not info.base else tokenizer_source(info.base)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(info: ModelInfo) -> bool:
    where = tokenizer_source(info)
    return where.is_file() or any((where / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer_from(where: Path):
    """A tokenizer from a folder or a .gguf file; without a pad token it pads with eos."""
    from transformers import AutoTokenizer

    if where.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(where.parent, gguf_file=where.name, trust_remote_code=trusted(where))
    else:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trusted(where))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(info: ModelInfo):
    return load_tokenizer_from(tokenizer_source(info))


def default_device() -> str:
    """Where models run unless told otherwise: the GPU when one is visible, else the CPU."""
    import torch  # here: the commands that only read configs (and `recall evaluate`'s start) need no torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> str:
    """The dtype models are loaded in on `device` unless told otherwise: float32 on the CPU (as always),
    bfloat16 on a GPU that supports it, else float32 (float16 would need loss scaling to train and can
    overflow the hidden states that feature extraction reads)."""
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def load_causal_lm(info: ModelInfo, dtype: torch.dtype | None = None, device: str | None = None):
    """Load a model for inference; LoRA adapters are merged into their base. `dtype`: float32 when None;
    `device`: `default_device()` when None."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    device = device or default_device()
    if info.kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(
            info.path.parent, gguf_file=info.path.name, dtype=dtype, trust_remote_code=trusted(info.path)
        )
    elif info.kind == "lora":
        from peft import PeftModel

        base = load_causal_lm(info.base, dtype, device)
        model = PeftModel.from_pretrained(base, info.path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(info.path, dtype=dtype, trust_remote_code=trusted(info.path))
    return model.to(device).eval()


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
