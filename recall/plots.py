"""PNG plots people would rather look at than read: merge-weight heatmaps, similarity curves."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from recall.atomic import atomic_path  # noqa: E402


def plot_merge_weights(weights: list[list[float]], model_names: list[str], out_png: str | os.PathLike) -> Path:
    """Heatmap of per-layer merge weights: layer groups down, models across."""
    n_layers, n_models = len(weights), len(model_names)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * n_models, 1.2 + 0.28 * n_layers))
    image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0, vmax=max(max(r) for r in weights))
    ax.set_xticks(range(n_models), model_names, rotation=30, ha="right")
    ax.set_yticks(range(n_layers), ["emb"] + [str(i) for i in range(1, n_layers)])
    ax.set_ylabel("layer group (0 = embeddings)")
    ax.set_title("merge weight per layer")
    if n_layers * n_models <= 200:
        for i, row in enumerate(weights):
            for j, w in enumerate(row):
                ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color="w" if w < 0.6 * image.norm.vmax else "k")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _save(fig, out_png)


def _save(fig, out_png: str | os.PathLike) -> Path:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out_png)
