"""Reports in the shape of the paper's tables and figures, from `recall evaluate` outputs.

Input: a report spec, YAML or JSON. Paths in it are relative to the spec file. Every section is
optional; each score is the task's primary metric (the first one in its metrics.json).

    tasks: [sst2, squad_v2, iwslt2017_en_fr, race, medmcqa]  # column order; default: the tasks of
                                                             # the first metrics.json read
    single:                  # table 1: one expert merged with the base
      - {finetuned_on: sst2, method: SFT only, metrics: runs/sst2/sft/eval/metrics.json}
      - {finetuned_on: sst2, method: RECALL, metrics: runs/sst2/recall/eval/metrics.json}
    multi:                   # table 2: several experts merged at once
      - {method: base model, metrics: runs/base/eval/metrics.json}
      - {setting: without base model, method: RECALL, metrics: runs/multi/eval/metrics.json}
    sequential:              # table 7, figure 5, backward transfer and forgetting
      - method: RECALL
        steps:               # in training order: step t learned `task`
          - {task: sst2, metrics: runs/seq/1/eval/metrics.json}
          - {task: squad_v2, metrics: runs/seq/2/eval/metrics.json}
    merge_weights: [runs/seq/2/model/merge_weights.json]  # heatmaps
    similarity: [runs/seq/2/similarity.json]              # layer-wise similarity curves
    gate: [runs/gate/sst2/metrics.json]                   # promotion-gate decisions, a line each
    bootstrap: {replicates: 1000, seed: 0}                # the paired bootstrap (these are the defaults)

Evidence: beside each metrics.json, `examples/<task>.jsonl` holds one scored record per test example
(older evaluations have none: their intervals read "n/a"). Every model is scored on the same examples,
so a paired bootstrap (`recall.reporting.statistics`) resamples them once per replicate for all models and steps
and gives each section's statistics (average; unseen-task average in `single`; final average and BWT
in `sequential`) a 95% interval, and the same for each method's difference to `sft` (the method named
sft or "SFT only", if any) and to the best other method by average. A difference whose interval
excludes 0 is marked `*`; otherwise it is reported as no difference. Every table states n, the
examples scored per task.

Output folder (written atomically): report.md (every table, the metric definitions and the plots),
one CSV per table (table1.csv, table2.csv, table7.csv, continual.csv, and the intervals in
table1_ci.csv, table2_ci.csv, continual_ci.csv), every table's numbers in metrics.json (plus, per
section, n_test and each method's intervals and differences), forgetting.png, merge_weights_<n>.png
and similarity_<n>.png.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import yaml

from recall.atomic import atomic_dir, atomic_file, check_output, read_json, write_json
from recall.data import iter_jsonl
from recall.errors import RecallError, read_text
from recall.reporting import statistics as paired
from recall.reporting.metrics import (
    Metrics,
    accuracy_matrix,
    average,
    backward_transfer,
    forgetting,
    primary_score,
    unseen_average,
)
from recall.reporting.plots import plot_forgetting, plot_merge_weights, plot_similarity
from recall.reporting.statistics import Interval, Statistic

# Fields each entry of a section needs; the other list sections are lists of names or paths.
ENTRY_FIELDS = {
    "single": ("finetuned_on", "method", "metrics"),
    "multi": ("method", "metrics"),
    "sequential": ("method", "steps"),
}
LIST_SECTIONS = {"tasks", "merge_weights", "similarity", "gate", *ENTRY_FIELDS}
SECTIONS = {*LIST_SECTIONS, "bootstrap"}
BOOTSTRAP = {"replicates": paired.REPLICATES, "seed": 0}
SFT_NAMES = {"sft", "sft only"}  # the reference method of "vs sft" (lower case)
# How far a metrics.json score may be from the aggregate of its examples/ records (rounding only).
CONSISTENT = 0.05
Cell = str | float | None


@dataclass
class Table:
    name: str  # file stem of its CSV
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines under the table: n, legends

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        lines += ["| " + " | ".join(_show(cell) for cell in row) + " |" for row in self.rows]
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        with atomic_file(path, "w") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.header)
            writer.writerows([round(c, 4) if isinstance(c, float) else c for c in row] for row in self.rows)


def _is_scores(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(s, (int, float)) for s in value.values())


def _show(cell: Cell) -> str:
    if cell is None:
        return "–"
    return f"{cell:.2f}" if isinstance(cell, float) else str(cell)


class Spec:
    """A validated report spec; metrics files are read once each, on first use."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            data = yaml.safe_load(read_text(self.path))
        except FileNotFoundError:
            raise RecallError(f"report spec {self.path} does not exist") from None
        except yaml.YAMLError as err:
            raise RecallError(f"report spec {self.path} is not valid YAML/JSON: {err}") from None
        if not isinstance(data, dict):
            raise RecallError(f"report spec {self.path} must be a mapping with sections {', '.join(sorted(SECTIONS))}")
        unknown = set(data) - SECTIONS
        if unknown:
            raise RecallError(
                f"report spec {self.path}: unknown section(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(SECTIONS))}"
            )
        if not set(data) - {"tasks", "bootstrap"}:
            raise RecallError(f"report spec {self.path} has nothing to report; add a section such as `single`")
        self.data = data
        self._check_structure()
        self.replicates, self.seed = self._bootstrap()
        self._metrics: dict[Path, Metrics] = {}

    def _check_structure(self) -> None:
        """Every section a list; entries with their fields; each sequence a non-empty list of steps."""
        for section in LIST_SECTIONS:
            items = self.entries(section)
            if not isinstance(items, list):
                raise RecallError(f"report spec {self.path}: `{section}` must be a list")
            for i, item in enumerate(items):
                fields = ENTRY_FIELDS.get(section)
                if fields is None and not isinstance(item, str):
                    raise RecallError(f"report spec {self.path}: `{section}` must list names or paths, got {item!r}")
                missing = [f for f in fields or () if not isinstance(item, dict) or f not in item]
                if missing:
                    raise RecallError(
                        f"report spec {self.path}: entry {i + 1} of `{section}` lacks `{missing[0]}` "
                        f"(each needs {', '.join(fields)})"
                    )
        for item in self.entries("sequential"):
            steps = item["steps"]
            if not isinstance(steps, list) or not steps:
                raise RecallError(
                    f"report spec {self.path}: sequential method {item['method']!r} needs a list of steps"
                )
            for i, step in enumerate(steps):
                if not isinstance(step, dict) or not {"task", "metrics"} <= set(step):
                    raise RecallError(
                        f"report spec {self.path}: step {i + 1} of {item['method']!r} needs `task` and `metrics`"
                    )

    def _bootstrap(self) -> tuple[int, int]:
        """The `bootstrap` section's replicates and seed, defaults filled in."""
        given = self.data.get("bootstrap") or {}
        if not isinstance(given, dict) or set(given) - set(BOOTSTRAP):
            raise RecallError(f"report spec {self.path}: `bootstrap` takes `replicates` and `seed`, got {given!r}")
        settings = {**BOOTSTRAP, **given}
        if (
            any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in settings.values())
            or settings["replicates"] < 1
        ):
            raise RecallError(
                f"report spec {self.path}: bootstrap replicates must be a positive integer and seed a "
                f"non-negative integer, got {given!r}"
            )
        return settings["replicates"], settings["seed"]

    def entries(self, section: str) -> list[Any]:
        return self.data.get(section) or []

    def file(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()

    def metrics(self, relative: str) -> Metrics:
        path = self.file(relative)
        if path not in self._metrics:
            try:
                data = read_json(path)
            except FileNotFoundError:
                raise RecallError(f"metrics file {path} (named in {self.path}) does not exist") from None
            if not isinstance(data, dict) or not all(_is_scores(v) for v in data.values()):
                raise RecallError(f"{path} is not a metrics.json: expected {{task: {{metric: score}}}}")
            self._metrics[path] = data
        return self._metrics[path]

    def scores(self, relative: str, tasks: Sequence[str]) -> dict[str, float]:
        metrics = self.metrics(relative)
        try:
            return {task: primary_score(metrics, task) for task in tasks}
        except RecallError as err:
            raise RecallError(f"{self.file(relative)}: {err}") from None

    def records(self, relative: str, tasks: Sequence[str]) -> dict[str, list[dict]]:
        """The per-example records in examples/<task>.jsonl beside a metrics file, for each task that has
        them (older evaluations have no examples/ folder: no records, no intervals)."""
        return read_records(self.file(relative).parent / "examples", tasks)

    def tasks(self) -> list[str]:
        """The `tasks` section, else the tasks of the first metrics file named in the spec."""
        if self.entries("tasks"):
            return list(self.entries("tasks"))
        first = [i["metrics"] for s in ("single", "multi") for i in self.entries(s)]
        first += [step["metrics"] for item in self.entries("sequential") for step in item["steps"]]
        return list(self.metrics(first[0])) if first else []


def read_records(folder: Path, tasks: Sequence[str]) -> dict[str, list[dict]]:
    """The records of `folder`/<task>.jsonl (an evaluation's examples/) for each task that has them."""
    return {task: _read_records(folder / f"{task}.jsonl") for task in tasks if (folder / f"{task}.jsonl").is_file()}


def _read_records(path: Path) -> list[dict]:
    records = []
    for number, record in iter_jsonl(path):
        if not isinstance(record.get("score"), (int, float)):
            raise RecallError(f"{path}:{number}: each line needs a numeric `score` (0-100), got {record!r:.80}")
        records.append(record)
    if not records:
        raise RecallError(f"{path} holds no records; remove it or re-run the evaluation")
    return records


def single_table(spec: Spec, tasks: list[str]) -> Table:
    """Table 1: rows = fine-tuning task x method; each method's mean over fine-tuning tasks closes it."""
    table = Table(
        "table1",
        "Table 1: one fine-tuned model merged with the base",
        ["Fine-tuned on", "Method", *tasks, "Avg from all tasks", "Avg from unseen tasks"],
    )
    by_method: dict[str, list[list[float | None]]] = {}
    groups = []
    for item in spec.entries("single"):
        if item["finetuned_on"] not in tasks:
            raise RecallError(
                f"report spec {spec.path}: finetuned_on {item['finetuned_on']!r} is not one of the "
                f"tasks {', '.join(tasks)}"
            )
        scores = spec.scores(item["metrics"], tasks)
        values = [*scores.values(), average(list(scores.values())), unseen_average(scores, [item["finetuned_on"]])]
        table.rows.append([item["finetuned_on"], item["method"], *values])
        by_method.setdefault(item["method"], []).append(values)
        groups.append(item["finetuned_on"])
    if len(set(groups)) > 1:
        for method, rows in by_method.items():
            means = [fmean(col) if None not in col else None for col in zip(*rows)]
            table.rows.append(["All Average", method, *means])
    return table


def multi_table(spec: Spec, tasks: list[str]) -> Table:
    """Table 2: rows = methods (optionally grouped by a setting such as "with base model")."""
    table = Table("table2", "Table 2: several fine-tuned models merged", ["Setting", "Method", *tasks, "Average"])
    for item in spec.entries("multi"):
        scores = list(spec.scores(item["metrics"], tasks).values())
        table.rows.append([item.get("setting", ""), item["method"], *scores, average(scores)])
    return table


@dataclass(frozen=True)
class TaskSequence:
    method: str
    order: list[str]  # task learned at each step
    matrix: list[list[float]]  # R[t][j], columns = the report's sequence columns


def sequences(spec: Spec, tasks: list[str]) -> tuple[list[str], list[TaskSequence]]:
    """Every method's accuracy matrix over one shared column order: the sequence, then other tasks."""
    found = [
        (item["method"], [s["task"] for s in item["steps"]], [s["metrics"] for s in item["steps"]])
        for item in spec.entries("sequential")
    ]
    if not found:
        return [], []
    longest = max((order for _, order, _ in found), key=len)
    for method, order, _ in found:
        if order != longest[: len(order)]:
            raise RecallError(
                f"report spec {spec.path}: sequence of {method!r} ({', '.join(order)}) differs from "
                f"{', '.join(longest)}; compare methods over one task order"
            )
    columns = longest + [t for t in tasks if t not in longest]
    result = []
    for method, order, paths in found:
        evaluations = []
        for t, path in enumerate(paths):
            # Step t must score the task it learned, the last step every task (BWT, final average).
            spec.scores(path, columns if t == len(paths) - 1 else [order[t]])  # names the file
            evaluations.append(spec.metrics(path))
        result.append(TaskSequence(method, order, accuracy_matrix(evaluations, columns)))
    return columns, result


def sequential_table(columns: list[str], seqs: list[TaskSequence]) -> Table:
    """Table 7: rows = method x step; columns = every task and the average."""
    table = Table("table7", "Table 7: sequential fine-tuning", ["Method", "Step", "Trained on", *columns, "Average"])
    for seq in seqs:
        for t, (task, row) in enumerate(zip(seq.order, seq.matrix)):
            table.rows.append([seq.method, f"Task {t + 1}", task, *row, average(row)])
    return table


def continual_table(columns: list[str], seqs: list[TaskSequence]) -> Table:
    """Backward transfer and forgetting of each method's final model (None with a single step)."""
    learned = columns[: max(len(s.order) for s in seqs) - 1]
    table = Table(
        "continual",
        "Continual-learning metrics of the final model",
        ["Method", "Steps", "Final average", "BWT", "Mean forgetting", *[f"Forgetting {t}" for t in learned]],
    )
    for seq in seqs:
        if len(seq.matrix) < 2:
            table.rows.append([seq.method, 1, average(seq.matrix[-1]), None, None, *[None] * len(learned)])
            continue
        drops = forgetting(seq.matrix)
        table.rows.append(
            [
                seq.method,
                len(seq.matrix),
                average(seq.matrix[-1]),
                backward_transfer(seq.matrix),
                fmean(drops),
                *drops,
                *[None] * (len(learned) - len(drops)),
            ]
        )
    return table


@dataclass(frozen=True)
class Evidence:
    """Every evaluation of the report as a row of one score matrix, with its bootstrap replicates."""

    columns: list[str]  # tasks, in the order of the score matrix's columns
    rows: dict[Path, int]  # metrics file -> its row
    scores: np.ndarray  # (E, T) primary scores from the metrics files; NaN: task not evaluated
    draws: np.ndarray  # (B, E, T) on each resample of the examples; NaN: no examples/<task>.jsonl
    n: dict[str, int | None]  # examples scored per task; None: no records

    def row(self, spec: Spec, relative: str) -> int:
        return self.rows[spec.file(relative)]

    def column(self, task: str) -> int:
        return self.columns.index(task)

    def interval(self, statistic: Statistic) -> Interval:
        return paired.interval(statistic, self.scores, self.draws)


def _score(metrics: Metrics, task: str) -> float:
    return primary_score(metrics, task) if metrics.get(task) else float("nan")


def _check_same_examples(
    files: Sequence[Path], records: Sequence[Mapping[str, list[dict]]], tasks: Sequence[str]
) -> None:
    """Pairing compares models example by example: each task's records must be the same examples
    (same count, same references) in every evaluation."""
    for task in tasks:
        having = [(f, r[task]) for f, r in zip(files, records) if task in r]
        for file, recs in having[1:]:
            first_file, first = having[0]
            if [x.get("reference") for x in recs] != [x.get("reference") for x in first]:
                raise RecallError(
                    f"the examples of {task} beside {file} ({len(recs)}) and beside {first_file} "
                    f"({len(first)}) are not the same test examples; a paired comparison needs every "
                    f"model scored on the same examples (same limit, same test file)"
                )


def gather_evidence(spec: Spec, columns: list[str]) -> Evidence:
    """Read every metrics file of the sections and the examples beside it; bootstrap them together."""
    named = [item["metrics"] for s in ("single", "multi") for item in spec.entries(s)]
    named += [step["metrics"] for item in spec.entries("sequential") for step in item["steps"]]
    relative: dict[Path, str] = {}  # one row per file, however often the spec names it
    for path in named:
        relative.setdefault(spec.file(path), path)
    files = list(relative)
    scores = np.array([[_score(spec.metrics(relative[f]), t) for t in columns] for f in files])
    scores = scores.reshape(len(files), len(columns))
    records = [spec.records(relative[f], columns) for f in files]
    _check_same_examples(files, records, columns)
    full = paired.full_scores(records, columns)
    for e, t in zip(*np.nonzero(np.abs(full - scores) > CONSISTENT)):
        raise RecallError(
            f"{files[e].parent / 'examples' / columns[t]}.jsonl gives {columns[t]} {full[e, t]:.2f}, "
            f"but {files[e]} says {scores[e, t]:.2f}: these examples are not from that evaluation"
        )
    draws = paired.score_draws(records, columns, spec.replicates, spec.seed)
    rows = {f: e for e, f in enumerate(files)}
    return Evidence(columns, rows, scores, draws, paired.example_counts(records, columns))


@dataclass(frozen=True)
class Row:
    """One row of an interval table: its text cells and its statistics by name."""

    labels: tuple[str, ...]  # e.g. (fine-tuned on, method)
    method: str
    stats: dict[str, Statistic]  # the first one ranks the "best other" method


def is_sft(method: str) -> bool:
    return method.strip().lower() in SFT_NAMES


def single_rows(spec: Spec, ev: Evidence, tasks: list[str]) -> list[list[Row]]:
    """Table 1's rows, grouped by fine-tuning task (methods compete within a group), then the
    "All Average" group: each method's statistics averaged over its fine-tuning tasks."""
    groups: dict[str, list[Row]] = {}
    for item in spec.entries("single"):
        e = ev.row(spec, item["metrics"])
        stats = {"avg": paired.mean_score(e, [ev.column(t) for t in tasks])}
        unseen = [ev.column(t) for t in tasks if t != item["finetuned_on"]]
        if unseen:
            stats["unseen_avg"] = paired.mean_score(e, unseen)
        row = Row((item["finetuned_on"], item["method"]), item["method"], stats)
        groups.setdefault(item["finetuned_on"], []).append(row)
    result = list(groups.values())
    if len(groups) > 1:
        by_method: dict[str, list[Row]] = {}
        for row in (r for group in result for r in group):
            by_method.setdefault(row.method, []).append(row)
        result.append(
            [
                Row(
                    ("All Average", method),
                    method,
                    {
                        s: paired.mean_of([r.stats[s] for r in rows])
                        for s in rows[0].stats
                        if all(s in r.stats for r in rows)
                    },
                )
                for method, rows in by_method.items()
            ]
        )
    return result


def multi_rows(spec: Spec, ev: Evidence, tasks: list[str]) -> list[list[Row]]:
    """Table 2's rows: one group, every setting and method competing."""
    columns = [ev.column(t) for t in tasks]
    return [
        [
            Row(
                (item.get("setting", ""), item["method"]),
                item["method"],
                {"avg": paired.mean_score(ev.row(spec, item["metrics"]), columns)},
            )
            for item in spec.entries("multi")
        ]
    ]


def sequential_rows(spec: Spec, ev: Evidence) -> list[list[Row]]:
    """Each method's final model: final average and BWT; methods compete among those with as many steps."""
    groups: dict[int, list[Row]] = {}
    for item in spec.entries("sequential"):
        steps = [ev.row(spec, step["metrics"]) for step in item["steps"]]
        stats = {"avg": paired.mean_score(steps[-1], range(len(ev.columns)))}
        if len(steps) > 1:
            stats["bwt"] = paired.backward_transfer(steps, [ev.column(step["task"]) for step in item["steps"]])
        groups.setdefault(len(steps), []).append(Row((item["method"],), item["method"], stats))
    return list(groups.values())


def n_note(n: Mapping[str, int | None]) -> str:
    """The line under a table that says how many test examples each task's scores rest on."""
    known = {t: v for t, v in n.items() if v is not None}
    if not known:
        return "n/a: no per-example results (examples/<task>.jsonl) beside these metrics files, so no intervals."
    if len(known) == len(n) and len(set(known.values())) == 1:
        return f"n = {next(iter(known.values()))} test examples scored per task, the same ones for every model."
    return "Test examples scored per task: " + ", ".join(f"{t} n = {v or 'n/a'}" for t, v in n.items()) + "."


def _estimate_cell(iv: Interval | None) -> str | None:
    return None if iv is None else iv.text()


def _difference_cell(iv: Interval | None) -> str | None:
    return None if iv is None else iv.text(difference=True)


def _rounded(value: float | None) -> float | None:
    # Significant digits, not decimals: a bound of 2e-5 must stay above 0, or the stored interval would
    # stop excluding 0 and a reader of metrics.json would mark it differently from the report.
    return None if value is None else float(f"{value:.6g}")


def interval_table(
    name: str,
    title: str,
    labels: list[str],
    names: dict[str, str],
    groups: list[list[Row]],
    ev: Evidence,
    tasks: Sequence[str],
    legend: str,
) -> tuple[Table, dict]:
    """Each row's statistics with their intervals and its paired differences to sft and to the best
    other row of its group (by the first statistic's estimate); also as metrics:
    {"n_test": {task: n}, row label: {stat, stat_ci95, diff_vs_sft, best_other, diff_vs_best_other}}."""
    stats = list(dict.fromkeys(s for group in groups for row in group for s in row.stats))
    with_sft = any(is_sft(row.method) for group in groups for row in group)
    header = [*labels, *(names[s] for s in stats)]
    header += [f"Δ {names[s]} vs sft" for s in stats] if with_sft else []
    header += ["Best other", *(f"Δ {names[s]} vs best other" for s in stats)]
    n = {t: ev.n[t] for t in tasks}
    table = Table(name, title, header, notes=[n_note(n), "", legend])
    metrics: dict[str, Any] = {"n_test": n}

    def differences(row: Row, other: Row | None) -> dict[str, Interval]:
        if other is None:
            return {}
        return {
            s: ev.interval(paired.difference(row.stats[s], other.stats[s]))
            for s in stats
            if s in row.stats and s in other.stats
        }

    for group in groups:
        owns = [{s: ev.interval(stat) for s, stat in row.stats.items()} for row in group]
        primary = [next(iter(own.values())).estimate for own in owns]
        for i, (row, own) in enumerate(zip(group, owns)):
            sft = next((r for r in group if is_sft(r.method) and r is not row), None)
            others = [j for j in range(len(group)) if j != i]
            best = group[max(others, key=primary.__getitem__)] if others else None
            vs_sft, vs_best = differences(row, sft), differences(row, best)
            cells: list[Cell] = [*row.labels, *(_estimate_cell(own.get(s)) for s in stats)]
            cells += [_difference_cell(vs_sft.get(s)) for s in stats] if with_sft else []
            cells += [best.method if best else None, *(_difference_cell(vs_best.get(s)) for s in stats)]
            table.rows.append(cells)
            entry: dict[str, Any] = {}
            for s, iv in own.items():
                entry[s] = _rounded(iv.estimate)
                entry[f"{s}_ci95"] = None if iv.low is None else [_rounded(iv.low), _rounded(iv.high)]
            if sft:
                entry["diff_vs_sft"] = {s: [_rounded(v) for v in iv] for s, iv in vs_sft.items()}
            if best:
                entry["best_other"] = best.method
                entry["diff_vs_best_other"] = {s: [_rounded(v) for v in iv] for s, iv in vs_best.items()}
            metrics["/".join(label for label in row.labels if label)] = entry
    return table, metrics


DEFINITIONS = """\
Scores are each task's primary metric (0-100). R[t][j] is the score on task j after step t of T.
Avg from unseen tasks: mean over the tasks the model was not fine-tuned on.
BWT = mean over j < T of (R[T][j] - R[j][j]); negative means forgetting.
Forgetting of task j = max over t < T of R[t][j], minus R[T][j].
Intervals: 95% paired bootstrap over test examples, "estimate [low, high]"; Δ: a method minus another
(sft, or the best other method of its group by average) on the same resampled examples.
"""


def short_names(paths: Sequence[str]) -> list[str]:
    """The shortest trailing path parts that tell the models apart (".../sst2/model" -> "sst2/model")."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _layer_plots(spec: Spec, section: str, out: Path, lines: list[str]) -> None:
    for n, relative in enumerate(spec.entries(section), 1):
        path = spec.file(relative)
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise RecallError(f"{section} file {path} (named in {spec.path}) does not exist") from None
        if not isinstance(data, dict) or not {"models", "layers"} <= set(data):
            raise RecallError(f"{path} needs `models` (paths) and `layers` (one list of values per layer)")
        png = f"{section}_{n}.png"
        names = short_names(data["models"])
        if section == "merge_weights":
            title = f"{data.get('method', 'merge')} weights per layer group"
            plot_merge_weights(data["layers"], names, out / png, title=title)
        else:
            title = f"Layer-wise {data.get('metric', 'similarity')} similarity"
            plot_similarity(data["layers"], names, out / png, metric=data.get("metric", "similarity"), title=title)
        lines.append(f"### {title}\n\nFrom `{relative}`.\n\n![{title}]({png})\n")
        if section == "merge_weights" and "spread" in data:
            lines.append(spread_text(data))


def spread_text(record: dict) -> str:
    """A merge's weight spread per layer group (merge_weights.json `spread`), and whether it is nearly the average."""
    spread = record["spread"]
    text = (
        "Weight spread per layer group, largest minus smallest weight: "
        + " ".join(f"{r:.3f}" for r in spread["range"])
        + "; entropy (nats, uniform "
        + f"{spread['uniform_entropy']:.3f}): "
        + " ".join(f"{e:.3f}" for e in spread["entropy"])
        + "."
    )
    if record.get("near_uniform") is not None:
        text += f" Every weight is within {record['near_uniform']:.3f} of uniform: nearly the plain average."
    return text + "\n"


def gate_lines(spec: Spec) -> list[str]:
    """One line per promotion-gate decision (`recall.gate`) the spec names, in step order."""
    if not spec.entries("gate"):
        return []
    lines = ["### Promotion gate\n"]
    for relative in spec.entries("gate"):
        record = read_json(spec.file(relative))
        lines.append(
            f"- {record['new_task']}: **{record['decision']}** against {record['champion']}: {record['reason']} "
            f"(`{relative}`)"
        )
    return [*lines, ""]


def table_metrics(tables: list[Table]) -> dict:
    """Every table's numbers as {table: {row label: {column: value}}} (the row label joins its text cells,
    e.g. "recall/Task 2/gen_translation"): what `dvc metrics` and `dvc exp show` compare across runs."""
    out: dict = {}
    for table in tables:
        rows = out.setdefault(table.name, {})
        for row in table.rows:
            label = "/".join(c for c in row if isinstance(c, str) and c)
            rows[label] = {h: round(c, 4) for h, c in zip(table.header, row) if isinstance(c, (int, float))}
    return out


def write_report(spec_path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Render every section of the spec into the folder `out` (replaced atomically); return report.md."""
    check_output(out, overwrite)
    spec = Spec(spec_path)
    tasks = spec.tasks()
    columns, seqs = sequences(spec, tasks)
    ev = gather_evidence(spec, columns or tasks)
    legend = (
        f"\\* : 95% paired-bootstrap interval excludes 0; otherwise no difference. Intervals are the 2.5th "
        f"and 97.5th percentiles over {spec.replicates} resamples of the test examples (seed {spec.seed}), "
        f"each resample shared by every model and step."
    )
    paper: list[Table] = []  # the paper's tables; their numbers are metrics.json's table keys
    tables: list[Table] = []  # every table in report order: each section's paper tables, then its intervals
    scenarios: dict[str, dict] = {}  # metrics.json's per-section n, intervals and differences

    def add(
        section: str,
        section_tables: list[Table],
        shown: list[str],
        name: str,
        title: str,
        labels: list[str],
        names: dict[str, str],
        rows: list[list[Row]],
    ) -> None:
        for table in section_tables:
            table.notes.append(n_note({t: ev.n[t] for t in shown}))
        interval, scenarios[section] = interval_table(name, title, labels, names, rows, ev, shown, legend)
        paper.extend(section_tables)
        tables.extend([*section_tables, interval])

    if spec.entries("single"):
        add(
            "single",
            [single_table(spec, tasks)],
            tasks,
            "table1_ci",
            "Table 1 with 95% intervals",
            ["Fine-tuned on", "Method"],
            {"avg": "Avg", "unseen_avg": "Unseen avg"},
            single_rows(spec, ev, tasks),
        )
    if spec.entries("multi"):
        add(
            "multi",
            [multi_table(spec, tasks)],
            tasks,
            "table2_ci",
            "Table 2 with 95% intervals",
            ["Setting", "Method"],
            {"avg": "Avg"},
            multi_rows(spec, ev, tasks),
        )
    if seqs:
        add(
            "sequential",
            [sequential_table(columns, seqs), continual_table(columns, seqs)],
            columns,
            "continual_ci",
            "Final models of the sequences with 95% intervals",
            ["Method"],
            {"avg": "Final avg", "bwt": "BWT"},
            sequential_rows(spec, ev),
        )
    with atomic_dir(out, overwrite) as tmp:
        lines = ["# RECALL report", "", f"From `{spec.path}`.", "", DEFINITIONS]
        for table in tables:
            table.write_csv(tmp / f"{table.name}.csv")
            lines.append(table.markdown())
        if seqs:
            plot_forgetting({s.method: s.matrix for s in seqs}, columns, tmp / "forgetting.png")
            lines.append("### Scores over the task sequence (figure 5)\n\n![forgetting](forgetting.png)\n")
        for section in ("merge_weights", "similarity"):
            _layer_plots(spec, section, tmp, lines)
        lines += gate_lines(spec)
        write_json(tmp / "metrics.json", {**table_metrics(paper), **scenarios})
        with atomic_file(tmp / "report.md") as fh:
            fh.write("\n".join(lines))
    return Path(out) / "report.md"
