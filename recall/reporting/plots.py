"""PNG plots: per-layer merge weights, layer-wise similarity, forgetting curves.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so no GUI backend is needed
and a caller's (e.g. a notebook's) pyplot state is left alone. Files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from recall.atomic import atomic_file
from recall.errors import RecallError


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic_file(out_png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    return Path(out_png)


def _check_rows(rows: Sequence[Sequence[float]], names: Sequence[str], what: str) -> None:
    if not rows:
        raise RecallError(f"no {what} to plot: the list of layers is empty")
    bad = [i for i, row in enumerate(rows) if len(row) != len(names)]
    if bad:
        raise RecallError(
            f"{what} of layer {bad[0]} has {len(rows[bad[0]])} values for {len(names)} models; "
            "give one value per model on every layer"
        )


def plot_merge_weights(
    weights: Sequence[Sequence[float]],
    model_names: Sequence[str],
    out_png: str | os.PathLike,
    title: str = "Merge weights per layer group",
) -> Path:
    """Heatmap of merge weights: one row per model, one column per layer group (0 = embeddings).

    `weights[i][q]` is model q's weight in layer group i (the layout of merge_weights.json's "layers").
    Cells carry their value while that stays legible (up to 12 groups).
    """
    _check_rows(weights, model_names, "merge weights")
    groups, models = len(weights), len(model_names)
    grid = [[row[q] for row in weights] for q in range(models)]  # models x groups: deep models grow wide
    fig = Figure(figsize=(min(3.5 + 0.4 * groups, 16), 1.4 + 0.5 * models))
    ax = fig.add_subplot()
    top = max(max(row) for row in weights)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=max(top, 1e-9))
    ax.set_yticks(range(models), labels=model_names)
    step = max(1, -(-groups // 16))  # at most ~16 layer labels
    ax.set_xticks(range(0, groups, step))
    ax.set_xlabel("layer group (0 = embeddings)")
    ax.set_title(title)
    if groups <= 12:
        for q, row in enumerate(grid):
            for i, w in enumerate(row):
                ax.text(i, q, f"{w:.2f}", ha="center", va="center", fontsize=8, color="w" if w < 0.6 * top else "k")
    fig.colorbar(image, ax=ax, label="weight", fraction=0.04, pad=0.02)
    return _save(fig, out_png)


def plot_similarity(
    similarities: Sequence[Sequence[float]],
    model_names: Sequence[str],
    out_png: str | os.PathLike,
    metric: str = "similarity",
    title: str = "Layer-wise representation similarity",
) -> Path:
    """One curve per model across layers (the paper's figures 6-7).

    `similarities[i][q]` is model q's similarity at layer i (0 = embeddings output).
    """
    _check_rows(similarities, model_names, "similarities")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    layers = range(len(similarities))
    for q, name in enumerate(model_names):
        ax.plot(layers, [row[q] for row in similarities], marker="o", markersize=3, label=name)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_png)


def plot_forgetting(
    curves: Mapping[str, Sequence[Sequence[float]]], tasks: Sequence[str], out_png: str | os.PathLike
) -> Path:
    """Score of each task over a task sequence (the paper's figure 5), one panel per task.

    `curves[method][t][j]` is the score of tasks[j] after step t (an accuracy matrix per method);
    step t learns tasks[t], marked by a dotted line in that task's panel.
    """
    if not curves or not tasks:
        raise RecallError("no sequence to plot: give at least one method and one task")
    steps = max(len(matrix) for matrix in curves.values())
    columns = min(3, len(tasks))
    rows = -(-len(tasks) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for j, (ax, task) in enumerate(zip(axes, tasks)):
        for method, matrix in curves.items():
            steps_scored = [(t + 1, row[j]) for t, row in enumerate(matrix) if row[j] is not None]
            ax.plot(*zip(*steps_scored), marker="o", label=method)
        if j < steps:
            ax.axvline(j + 1, color="grey", linestyle=":", linewidth=1)
        ax.set_title(task)
        ax.set_xlabel("step (tasks learned)")
        ax.set_ylabel("score")
        ax.set_xticks(range(1, steps + 1))
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    return _save(fig, out_png)
