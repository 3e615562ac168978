"""Tensor sources: every input model, full or LoRA adapter, seen as `name -> full tensor`, one at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from recall.errors import RecallError
from recall.models import ModelInfo, safetensors_folder
from recall.safetensors_io import SafetensorsModel, TensorInfo, same_tensor


class FullModel:
    """A model's own weights."""

    def __init__(self, folder: Path):
        self.weights = SafetensorsModel(folder)
        self.tensors: dict[str, TensorInfo] = self.weights.tensors

    def read(self, name: str) -> torch.Tensor:
        return self.weights.mapped(name)


class LoraModel:
    """Base weights plus a LoRA adapter: theta_0 + B A * scale for adapted tensors, theta_0 elsewhere."""

    def __init__(self, adapter_dir: Path, base: FullModel):
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise RecallError(f"{adapter_dir} is a {config['peft_type']} adapter; only LoRA adapters can be merged")
        if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save"):
            raise RecallError(
                f"{adapter_dir} uses rank_pattern/alpha_pattern/modules_to_save, which recall does not merge yet; "
                "merge the adapter into its base (merge_and_unload) and pass the full model instead"
            )
        r, alpha = config["r"], config["lora_alpha"]
        self.scale = alpha / (r**0.5 if config.get("use_rslora") else r)
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        self.base = base
        self.tensors = base.tensors
        adapter = SafetensorsModel(adapter_dir)
        self._ab: dict[str, tuple[str, str]] = {}
        pattern = re.compile(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$")
        pairs: dict[str, dict[str, str]] = {}
        for key in adapter.tensors:
            if m := pattern.match(key):
                pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = key
        for target, ab in pairs.items():
            name = self._match(target)
            if set(ab) != {"A", "B"}:
                raise RecallError(f"{adapter_dir}: LoRA weights for {target} lack lora_A or lora_B")
            self._ab[name] = (ab["A"], ab["B"])
            self._check_shapes(adapter_dir, name, adapter.tensors[ab["A"]].shape, adapter.tensors[ab["B"]].shape)
        self.adapter = adapter

    def _check_shapes(self, adapter_dir: Path, name: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        """B @ A must have the base tensor's shape: checked from the headers, before any tensor is read."""
        delta = (b[0], a[1]) if len(a) == len(b) == 2 and a[0] == b[1] else None
        if delta and self.fan_in_fan_out:
            delta = delta[::-1]
        if delta != tuple(self.tensors[name].shape):
            raise RecallError(
                f"{adapter_dir}: LoRA weights for {name} (B {list(b)} @ A {list(a)}) do not fit the base's "
                f"{list(self.tensors[name].shape)}; is --base the model the adapter was trained on?"
            )

    def _match(self, target: str) -> str:
        for name in self.tensors:
            if same_tensor(name, target):
                return name
        raise RecallError(f"LoRA target {target} is not a tensor of the base model; is --base the adapter's base?")

    def read(self, name: str) -> torch.Tensor:
        base = self.base.read(name)
        if name not in self._ab:
            return base
        a_key, b_key = self._ab[name]
        delta = self.adapter.read(b_key).float() @ self.adapter.read(a_key).float() * self.scale
        if self.fan_in_fan_out:
            delta = delta.T
        return (base.float() + delta).to(base.dtype)


def open_source(info: ModelInfo, bases: dict[Path, FullModel]) -> FullModel | LoraModel:
    """A tensor source for a model; adapters on the same base share one reader of it."""
    folder = safetensors_folder(info)
    if info.kind != "lora":
        return FullModel(folder)
    if folder not in bases:
        bases[folder] = FullModel(folder)
    return LoraModel(info.path, bases[folder])
