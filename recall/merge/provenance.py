"""How a merged model was made, written beside its weights: merge_weights.json (inputs, method,
parameters, per-layer weights and the weight source's evidence), a heatmap of the weights and a model card."""

from __future__ import annotations

import json
from pathlib import Path

from recall.atomic import write_json
from recall.hashing import sha256_file

WEIGHTS_FILE = "merge_weights.json"


def write_provenance(folder: Path, record: dict) -> None:
    """merge_weights.json, merge_weights.png and README.md of the merge `record` into `folder`."""
    from recall.reporting.plots import plot_merge_weights  # matplotlib only when a merge is written

    write_json(folder / WEIGHTS_FILE, record)
    plot_merge_weights(record["layers"], [Path(m).name for m in record["models"]], folder / "merge_weights.png")
    (folder / "README.md").write_text(model_card(record, folder / WEIGHTS_FILE))


def model_card(record: dict, weights_file: Path) -> str:
    """A README.md stating how the model was made: inputs, method, per-layer weights."""
    digest = sha256_file(weights_file)
    rows = "\n".join(f"| {i} | " + " | ".join(f"{w:.4f}" for w in row) + " |" for i, row in enumerate(record["layers"]))
    names = [Path(m).name for m in record["models"]]
    return f"""---
tags: [merge, recall]
---
# Merged model ({record["method"]})

Made by `recall merge --method {record["method"]}` from these models, in order:

{chr(10).join(f"{i}. `{m}`" for i, m in enumerate(record["models"]))}

Base: `{record["base"]}`. Parameters: `{json.dumps(record["params"])}`.
Merge weights: `merge_weights.json` (sha256 `{digest}`), heatmap `merge_weights.png`.

| layer group | {" | ".join(names)} |
|---|{"---|" * len(names)}
{rows}
"""
