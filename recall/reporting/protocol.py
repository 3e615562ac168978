"""A protocol's report: every method over task orders x training seeds, with intervals over both.

The spec (JSON, written by the pipeline's report stage; paths relative to its folder):

    {"tasks": [task, ...],                        the suite's tasks (the columns)
     "base": "base/eval/metrics.json",            optional: the base model on every task
     "runs": [{"label": "o1-s0", "order": [task, ...], "seed": 0,
               "methods": {method: [metrics.json after step 1, ..., after the last step]}}],
     "reference": "sft", "control": "average", "bootstrap": {"replicates": 1000, "seed": 0},
     "weighted": {chain: {"method": "recall", "settings": {"temperature": 1.0, "calibrate": "none"}}}}
                                                  optional: the chains weighted by similarities, each run
                                                  then naming "similarity": {chain: [similarity.json per step]}

Per run, every evaluation's per-example records (examples/<task>.jsonl beside its metrics.json) are
resampled together (`statistics.score_draws`), so within a run every method and step sees the same
test examples. Across runs, `statistics.two_level` resamples the runs, then one example resample per
drawn run: the intervals cover training (order, seed) and test-sample variance, paired across methods.

A chain weighted by similarities (RECALL) also shows the weight its merges gave the newest model
(`merge_weights`), recomputed from each step's similarity.json as its merge computed it, so the report
says how far RECALL got from the plain average without reading the (pruned) merged models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from recall.atomic import atomic_dir, atomic_file, read_json, write_json
from recall.errors import RecallError
from recall.reporting import statistics as paired
from recall.reporting.metrics import primary_score
from recall.reporting.plots import _save
from recall.reporting.report import read_records
from recall.reporting.statistics import Interval, Statistic

STATS = ("final_avg", "bwt", "forgetting")


@dataclass(frozen=True)
class RunEvidence:
    """One run's evaluations as rows of a score matrix, with their example resamples."""

    label: str
    order: tuple[str, ...]
    seed: int
    rows: dict[str, list[int]]  # method -> its evaluation rows, one per step
    learned: list[int]  # the column of the task learned at each step
    unseen: list[int]  # the columns of the tasks only scored after the last step (`evaluate.unseen`)
    scores: np.ndarray  # (E, T)
    draws: np.ndarray  # (B, E, T)
    n: dict[str, int | None]  # test examples per task; None: no records

    def statistic(self, method: str, name: str) -> Statistic:
        rows = self.rows[method]
        if name in ("final_avg", "unseen_avg"):
            return paired.mean_score(rows[-1], self.learned if name == "final_avg" else self.unseen)
        return (paired.backward_transfer if name == "bwt" else paired.forgetting)(rows, self.learned)

    @property
    def stats(self) -> tuple[str, ...]:
        return (*STATS, "unseen_avg") if self.unseen else STATS

    def value(self, statistic: Statistic) -> tuple[float, np.ndarray]:
        """The statistic on all examples and on each resample: a run's entry of `two_level`."""
        return float(statistic(self.scores)), statistic(self.draws)


def _scores(path: Path, tasks: Sequence[str]) -> list[float]:
    try:
        metrics = read_json(path)
    except FileNotFoundError:
        raise RecallError(f"metrics file {path} does not exist; run the pipeline's evaluations first") from None
    return [primary_score(metrics, t) if metrics.get(t) else float("nan") for t in tasks]


def gather(spec: dict, folder: Path, tasks: list[str], replicates: int, seed: int) -> list[RunEvidence]:
    """Every run's evaluations, each run's examples resampled on their own (`seed` + the run's index);
    `tasks`: the columns, the suite's tasks then the unseen ones."""
    runs = []
    for i, run in enumerate(spec["runs"]):
        files, rows = [], {}
        for method, steps in run["methods"].items():
            if len(steps) != len(run["order"]):
                raise RecallError(f"run {run['label']}: method {method} has {len(steps)} evaluations for its steps")
            rows[method] = list(range(len(files), len(files) + len(steps)))
            files += [folder / s for s in steps]
        scores = np.array([_scores(f, tasks) for f in files]).reshape(len(files), len(tasks))
        records = [read_records(f.parent / "examples", tasks) for f in files]
        draws = paired.score_draws(records, tasks, replicates, seed + i)
        learned, unseen = [tasks.index(t) for t in run["order"]], [tasks.index(t) for t in spec.get("unseen", [])]
        n = paired.example_counts(records, tasks)
        runs.append(
            RunEvidence(run["label"], tuple(run["order"]), run["seed"], rows, learned, unseen, scores, draws, n)
        )
    return runs


def _triple(iv: Interval) -> list[float | None]:
    return [_round(iv.low), _round(iv.estimate), _round(iv.high)]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def compare(
    runs: list[RunEvidence], a: str, b: str, replicates: int, seed: int, stats: Sequence[str] | None = None
) -> tuple[dict[str, list], dict[str, float], int]:
    """a minus b over the runs that have both: per statistic (`stats`, default all) [low, estimate, high],
    the per-run final-average differences, and the runs where a's final average is higher."""
    both = [r for r in runs if a in r.rows and b in r.rows]
    diffs = {
        name: _triple(
            paired.two_level(
                [r.value(paired.difference(r.statistic(a, name), r.statistic(b, name))) for r in both], replicates, seed
            )
        )
        for name in (stats or both[0].stats)
    }
    per_run = {
        r.label: r.value(paired.difference(r.statistic(a, "final_avg"), r.statistic(b, "final_avg")))[0] for r in both
    }
    return diffs, {k: round(v, 4) for k, v in per_run.items()}, sum(v > 0 for v in per_run.values())


def summarize(spec: dict, runs: list[RunEvidence], replicates: int, seed: int, base: dict | None) -> dict:
    """protocol.json: the suite, then per method its runs, pooled statistics with two-level intervals,
    paired differences to the reference (SeqFT), the control (the plain average) and the best other method,
    wins, and the spread of its final average over orders."""
    tasks, reference, control = spec["tasks"], spec.get("reference", "sft"), spec.get("control", "average")
    methods = list(dict.fromkeys(m for r in runs for m in r.rows))
    pooled: dict[str, dict] = {}
    for m in methods:
        mine = [r for r in runs if m in r.rows]
        entry: dict = {"runs": len(mine)}
        for name in mine[0].stats:
            iv = paired.two_level([r.value(r.statistic(m, name)) for r in mine], replicates, seed)
            entry[name], entry[f"{name}_ci95"] = _round(iv.estimate), [_round(iv.low), _round(iv.high)]
        entry["per_run"] = {
            r.label: {name: round(r.value(r.statistic(m, name))[0], 4) for name in r.stats} for r in mine
        }
        by_order: dict[str, list[float]] = {}
        for r in mine:
            by_order.setdefault(r.label.split("-")[0], []).append(entry["per_run"][r.label]["final_avg"])
        means = {o: round(float(np.mean(v)), 4) for o, v in by_order.items()}
        entry["order_sensitivity"] = {
            "final_avg_by_order": means,
            "range": round(max(means.values()) - min(means.values()), 4),
            "sd": round(float(np.std(list(means.values()), ddof=1)), 4) if len(means) > 1 else None,
        }
        pooled[m] = entry
    for m, entry in pooled.items():
        # a pair is compared on the runs that have both; chains at disjoint seeds have none
        paired_with = [o for o in methods if o != m and any(m in r.rows and o in r.rows for r in runs)]
        best = max(paired_with, key=lambda o: pooled[o]["final_avg"], default=None)
        for key, other in (("sft", reference), ("average", control), ("best_other", best)):
            if other not in paired_with:
                continue
            diffs, per_run, wins = compare(runs, m, other, replicates, seed)
            entry[f"diff_vs_{key}"] = diffs
            entry[f"per_run_diff_vs_{key}"] = per_run
            entry[f"wins_vs_{key}"] = wins
            if key == "best_other":
                entry["best_other"] = other
    # every pair's final-average difference, the earlier-listed method minus the later
    pairs: dict[str, dict[str, list]] = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            if any(a in r.rows and b in r.rows for r in runs):
                pairs.setdefault(a, {})[b] = compare(runs, a, b, replicates, seed, ("final_avg",))[0]["final_avg"]
    learned, least = {}, {}
    if reference in pooled:
        for t in tasks:
            right_after = [
                r.scores[r.rows[reference][r.order.index(t)], tasks.index(t)] for r in runs if reference in r.rows
            ]
            learned[t] = [None if base is None else _round(base.get(t)), _round(float(np.mean(right_after)))]
            least[t] = _round(float(min(right_after)))  # "every expert learns its task" is a claim about each run
    return {
        "orders": [list(o) for o in dict.fromkeys(r.order for r in runs)],
        "unseen": list(spec.get("unseen", [])),
        "seeds": sorted({r.seed for r in runs}),
        "runs": [r.label for r in runs],
        "n_test": runs[0].n,
        "learned": learned,
        "learned_least": least,
        "bootstrap": {
            "replicates": replicates,
            "seed": seed,
            "level": paired.LEVEL,
            "kind": "two-level: runs, then test examples",
        },
        "methods": pooled,
        "pairs": pairs,
    }


def markdown(summary: dict) -> str:
    """The protocol's tables: pooled per method, then the final average of every run."""
    runs, methods = summary["runs"], summary["methods"]

    def cell(m: dict, name: str) -> str:
        low, high = m[f"{name}_ci95"]
        return Interval(low, m[name], high).text()

    def diff(m: dict, key: str) -> str:
        triple = m.get(f"diff_vs_{key}", {}).get("final_avg")
        wins = f" ({m[f'wins_vs_{key}']}/{len(m[f'per_run_diff_vs_{key}'])} runs)" if triple else ""
        return Interval(*triple).text(difference=True) + wins if triple else ""

    lines = [
        "# Protocol report",
        "",
        f"Orders: {'; '.join(' > '.join(o) for o in summary['orders'])}. Seeds: {summary['seeds']}. "
        f"Test examples per task: {', '.join(f'{t} {n}' for t, n in summary['n_test'].items())}.",
        "",
        "Final avg: mean score of the last model over the order's tasks (unseen avg: over the tasks it never "
        "learned); BWT = mean over j < T of "
        "R[T][j] - R[j][j]; forgetting = mean over j < T of max over t < T of R[t][j] minus R[T][j]. "
        f"Intervals: 95% two-level bootstrap ({summary['bootstrap']['replicates']} replicates): the runs "
        "(order, seed) resampled, then the test examples of each drawn run, the same draws for every method. "
        "A difference marked * excludes 0; wins count the runs where the method's final average is higher.",
        "",
        "| Method | Runs | Final avg | BWT | Forgetting | "
        + ("Unseen avg | " if summary["unseen"] else "")
        + "Δ final avg vs sft | Δ vs average | Δ vs best other | Order range |",
        "|---|---|---|---|---|" + ("---|" if summary["unseen"] else "") + "---|---|---|---|",
    ]
    for name, m in methods.items():
        best = f"{diff(m, 'best_other')} ({m['best_other']})" if "best_other" in m else ""
        unseen = f"{cell(m, 'unseen_avg')} | " if summary["unseen"] else ""
        lines.append(
            f"| {name} | {m['runs']} | {cell(m, 'final_avg')} | {cell(m, 'bwt')} | {cell(m, 'forgetting')} | {unseen}"
            f"{diff(m, 'sft')} | {diff(m, 'average')} | {best} | {m['order_sensitivity']['range']:.2f} |"
        )
    lines += ["", "Final average per run:", "", "| Method | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for name, m in methods.items():
        cells = [f"{m['per_run'][r]['final_avg']:.2f}" if r in m["per_run"] else "–" for r in runs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += pairs_markdown(summary.get("pairs", {}), list(methods))
    if summary.get("weights"):
        lines += weights_markdown(summary["weights"], runs)
    if summary["learned"]:
        lines += ["", "Learned (base, then SeqFT right after learning the task: mean over runs, least run):", ""]
        lines += [
            f"- {t}: {'n/a' if b is None else f'{b:.2f}'} -> {e:.2f} (least {summary['learned_least'][t]:.2f})"
            for t, (b, e) in summary["learned"].items()
        ]
    return "\n".join([*lines, "", "![pooled comparison](protocol.png)", ""])


def pairs_markdown(pairs: dict[str, dict[str, list]], methods: list[str]) -> list[str]:
    """Per method, those whose final average it beats or trails with the interval excluding 0 (on the runs
    both have); every other pair is no difference."""
    diff = {(a, b): t for a, row in pairs.items() for b, t in row.items()}
    diff |= {(b, a): [-t[2], -t[1], -t[0]] for (a, b), t in list(diff.items())}
    text = lambda o, t: f"{o} {Interval(*t).text(difference=True)}"  # noqa: E731
    lines = [
        "",
        "Every pair (final average, the row's method minus the other, 95% two-level interval on the runs "
        "both have; the rest are no difference):",
        "",
        "| Method | Beats | Trails |",
        "|---|---|---|",
    ]
    for m in methods:
        mine = [(o, diff[m, o]) for o in methods if (m, o) in diff]
        beats = ", ".join(text(o, t) for o, t in mine if t[0] > 0) or "–"
        trails = ", ".join(text(o, t) for o, t in mine if t[2] < 0) or "–"
        lines.append(f"| {m} | {beats} | {trails} |")
    return lines if diff else []


def plot_pooled(summary: dict, out_png: str | os.PathLike) -> Path:
    """Each method's pooled final average with its interval, and every run's final average as a dot."""
    methods = summary["methods"]
    fig = Figure(figsize=(6.4, 0.5 * len(methods) + 1.6))
    ax = fig.subplots()
    for y, m in enumerate(methods.values()):
        low, high = m["final_avg_ci95"]
        if low is not None:
            ax.plot([low, high], [y, y], color="C0", linewidth=3, alpha=0.5)
        ax.plot([m["final_avg"]], [y], "o", color="C0")
        ax.plot([r["final_avg"] for r in m["per_run"].values()], [y] * len(m["per_run"]), "x", color="grey")
    ax.set_yticks(range(len(methods)), list(methods))
    ax.invert_yaxis()
    ax.set_xlabel("final average (o: pooled with 95% two-level interval; x: each run)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out_png)


def merge_weights(spec: dict) -> dict:
    """Per chain weighted by similarities (each run's `weights`, which the pipeline's report stage
    recomputes from the similarities its merges read): the weight each merge gave the newest model (the
    step's fine-tune), per run and step: the mean over the layer groups, their least and largest, and
    the largest deviation of any weight from uniform (1/N); pooled over the chain's distinct merges (a
    step that runs share counted once)."""
    out = {}
    for chain in dict.fromkeys(c for run in spec["runs"] for c in run.get("weights", {})):
        runs, distinct = {}, {}
        for run in spec["runs"]:
            if (steps := run.get("weights", {}).get(chain)) is None:
                continue
            if len(steps) != len(run["order"]):
                raise RecallError(f"run {run['label']}: chain {chain} has {len(steps)} merge weights for its steps")
            runs[run["label"]] = {}
            for task, step in zip(run["order"], steps):
                column = distinct.setdefault(step["similarity"], np.asarray(step["newest"], dtype=np.float64))
                runs[run["label"]][task] = {
                    "mean": _round(float(column.mean())),
                    "min": _round(float(column.min())),
                    "max": _round(float(column.max())),
                    "deviation": _round(step["deviation"]),
                }
        pooled = np.concatenate(list(distinct.values()))
        out[chain] = {
            "runs": runs,
            "pooled": {k: _round(float(f(pooled))) for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max))},
        }
    return out


def weights_markdown(weights: dict, runs: list[str]) -> list[str]:
    """The newest model's weight per chain and run: mean over the run's merges and layer groups [least, largest]."""
    lines = [
        "",
        "Merge weights of the chains weighted by similarities: the weight each merge gave the newest model "
        "(the step's fine-tune), mean over the run's merges and layer groups [least, largest]. 0.5 everywhere "
        "is the plain average (the `average` chain); 1 keeps only the fine-tune.",
        "",
        "| Chain | " + " | ".join(runs) + " | Pooled |",
        "|---|" + "---|" * (len(runs) + 1),
    ]
    for chain, entry in weights.items():
        cells = []
        for r in runs:
            steps = list(entry["runs"].get(r, {}).values())
            cells.append(
                f"{np.mean([s['mean'] for s in steps]):.3f} [{min(s['min'] for s in steps):.3f}, "
                f"{max(s['max'] for s in steps):.3f}]"
                if steps
                else "–"
            )
        p = entry["pooled"]
        lines.append(f"| {chain} | " + " | ".join(cells) + f" | {p['mean']:.3f} [{p['min']:.3f}, {p['max']:.3f}] |")
    return lines


def write_protocol(spec_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """protocol.json, report.md and protocol.png of the spec, into the folder `out` (replaced atomically)."""
    spec_path = Path(spec_path)
    spec = read_json(spec_path)
    settings = {**{"replicates": paired.REPLICATES, "seed": 0}, **spec.get("bootstrap", {})}
    tasks = [*spec["tasks"], *spec.get("unseen", [])]
    runs = gather(spec, spec_path.parent, tasks, settings["replicates"], settings["seed"])
    base = None
    if spec.get("base"):
        base = dict(zip(tasks, _scores(spec_path.parent / spec["base"], tasks)))
    summary = summarize(spec, runs, settings["replicates"], settings["seed"], base)
    if weights := merge_weights(spec):
        summary["weights"] = weights
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "protocol.json", summary)
        plot_pooled(summary, tmp / "protocol.png")
        with atomic_file(tmp / "report.md") as fh:
            fh.write(markdown(summary))
    return Path(out) / "report.md"
