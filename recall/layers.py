"""Map every parameter to its layer group.

Group 0 holds the embeddings (token and position), group i the parameters of block i-1, and group L
(the last block's group) also takes the final norm and an untied lm_head; tied weights follow group 0.
Hidden state i of `output_hidden_states` is the output of group i, so representation i decides the
merge weights of group i.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from recall.errors import RecallError


def _block_list(model: nn.Module, num_layers: int) -> str:
    """Name of the ModuleList holding the model's `num_layers` transformer blocks."""
    candidates = [
        name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == num_layers
    ]
    if not candidates:
        raise RecallError(
            f"cannot find the transformer blocks of {type(model).__name__}: no ModuleList holds "
            f"num_hidden_layers={num_layers} modules; this architecture is not supported"
        )
    return min(candidates, key=len)  # the outermost one, e.g. model.layers rather than a nested list


def group_map(config) -> tuple[dict[str, int], str]:
    """Group of every state-dict name of the architecture (built on the meta device: no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    L = config.num_hidden_layers
    blocks = _block_list(model, L)
    embedding_prefixes = tuple(
        name + "."
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Embedding) and not name.startswith(blocks + ".")
    )
    tied = getattr(config, "tie_word_embeddings", False)
    out_emb = model.get_output_embeddings()
    out_names = {f"{n}.weight" for n, m in model.named_modules() if m is out_emb and m is not None}
    block_re = re.compile(re.escape(blocks) + r"\.(\d+)\.")
    groups = {}
    for name in model.state_dict(keep_vars=True):
        if m := block_re.match(name):
            groups[name] = int(m.group(1)) + 1
        elif name.startswith(embedding_prefixes) or (tied and name in out_names):
            groups[name] = 0
        else:
            groups[name] = L
    return groups, getattr(model, "base_model_prefix", "")


def tensor_groups(config, tensor_names) -> dict[str, int]:
    """Group of each stored tensor name; checkpoints may omit or add the base-model prefix."""
    groups, prefix = group_map(config)
    out, unknown = {}, []
    for name in tensor_names:
        for candidate in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
            if candidate in groups:
                out[name] = groups[candidate]
                break
        else:
            unknown.append(name)
    if unknown:
        raise RecallError(
            f"{len(unknown)} tensors do not belong to a {config.model_type} model, e.g. {unknown[:3]}; "
            "the checkpoint does not match its config.json"
        )
    return out
