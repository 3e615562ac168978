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

Output folder (written atomically): report.md (every table, the metric definitions and the plots),
one CSV per table (table1.csv, table2.csv, table7.csv, continual.csv), every table's numbers in
metrics.json, forgetting.png, merge_weights_<n>.png and similarity_<n>.png.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml

from recall.atomic import atomic_dir, atomic_file, read_json, write_json
from recall.errors import RecallError
from recall.metrics import (
    Metrics,
    accuracy_matrix,
    average,
    backward_transfer,
    forgetting,
    primary_score,
    unseen_average,
)
from recall.plots import plot_forgetting, plot_merge_weights, plot_similarity

# Fields each entry of a section needs; the other sections are lists of names or paths.
ENTRY_FIELDS = {"single": ("finetuned_on", "method", "metrics"), "multi": ("method", "metrics"),
                "sequential": ("method", "steps")}
SECTIONS = {"tasks", "merge_weights", "similarity", *ENTRY_FIELDS}
Cell = str | float | None


@dataclass
class Table:
    name: str  # file stem of its CSV
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(_show(cell) for cell in row) + " |" for row in self.rows]
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
            data = yaml.safe_load(self.path.read_text())
        except FileNotFoundError:
            raise RecallError(f"report spec {self.path} does not exist") from None
        except yaml.YAMLError as err:
            raise RecallError(f"report spec {self.path} is not valid YAML/JSON: {err}") from None
        if not isinstance(data, dict):
            raise RecallError(f"report spec {self.path} must be a mapping with sections {', '.join(sorted(SECTIONS))}")
        unknown = set(data) - SECTIONS
        if unknown:
            raise RecallError(f"report spec {self.path}: unknown section(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(SECTIONS))}")
        if not set(data) - {"tasks"}:
            raise RecallError(f"report spec {self.path} has nothing to report; add a section such as `single`")
        self.data = data
        self._check_structure()
        self._metrics: dict[Path, Metrics] = {}

    def _check_structure(self) -> None:
        """Every section a list; entries with their fields; each sequence a non-empty list of steps."""
        for section in SECTIONS:
            items = self.entries(section)
            if not isinstance(items, list):
                raise RecallError(f"report spec {self.path}: `{section}` must be a list")
            for i, item in enumerate(items):
                fields = ENTRY_FIELDS.get(section)
                if fields is None and not isinstance(item, str):
                    raise RecallError(f"report spec {self.path}: `{section}` must list names or paths, got {item!r}")
                missing = [f for f in fields or () if not isinstance(item, dict) or f not in item]
                if missing:
                    raise RecallError(f"report spec {self.path}: entry {i + 1} of `{section}` lacks `{missing[0]}` "
                                      f"(each needs {', '.join(fields)})")
        for item in self.entries("sequential"):
            steps = item["steps"]
            if not isinstance(steps, list) or not steps:
                raise RecallError(f"report spec {self.path}: sequential method {item['method']!r} needs a list of steps")
            for i, step in enumerate(steps):
                if not isinstance(step, dict) or not {"task", "metrics"} <= set(step):
                    raise RecallError(
                        f"report spec {self.path}: step {i + 1} of {item['method']!r} needs `task` and `metrics`"
                    )

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

    def tasks(self) -> list[str]:
        """The `tasks` section, else the tasks of the first metrics file named in the spec."""
        if self.entries("tasks"):
            return list(self.entries("tasks"))
        first = [i["metrics"] for s in ("single", "multi") for i in self.entries(s)]
        first += [step["metrics"] for item in self.entries("sequential") for step in item["steps"]]
        return list(self.metrics(first[0])) if first else []


def single_table(spec: Spec, tasks: list[str]) -> Table:
    """Table 1: rows = fine-tuning task x method; each method's mean over fine-tuning tasks closes it."""
    table = Table("table1", "Table 1: one fine-tuned model merged with the base",
                  ["Fine-tuned on", "Method", *tasks, "Avg from all tasks", "Avg from unseen tasks"])
    by_method: dict[str, list[list[float | None]]] = {}
    groups = []
    for item in spec.entries("single"):
        if item["finetuned_on"] not in tasks:
            raise RecallError(f"report spec {spec.path}: finetuned_on {item['finetuned_on']!r} is not one of the "
                              f"tasks {', '.join(tasks)}")
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
    found = [(item["method"], [s["task"] for s in item["steps"]], [s["metrics"] for s in item["steps"]])
             for item in spec.entries("sequential")]
    if not found:
        return [], []
    longest = max((order for _, order, _ in found), key=len)
    for method, order, _ in found:
        if order != longest[: len(order)]:
            raise RecallError(f"report spec {spec.path}: sequence of {method!r} ({', '.join(order)}) differs from "
                              f"{', '.join(longest)}; compare methods over one task order")
    columns = longest + [t for t in tasks if t not in longest]
    result = []
    for method, order, paths in found:
        evaluations = []
        for path in paths:
            spec.scores(path, columns)  # names the file if a task is missing
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
    table = Table("continual", "Continual-learning metrics of the final model",
                  ["Method", "Steps", "Final average", "BWT", "Mean forgetting", *[f"Forgetting {t}" for t in learned]])
    for seq in seqs:
        if len(seq.matrix) < 2:
            table.rows.append([seq.method, 1, average(seq.matrix[-1]), None, None, *[None] * len(learned)])
            continue
        drops = forgetting(seq.matrix)
        table.rows.append([seq.method, len(seq.matrix), average(seq.matrix[-1]), backward_transfer(seq.matrix),
                           fmean(drops), *drops, *[None] * (len(learned) - len(drops))])
    return table


DEFINITIONS = """\
Scores are each task's primary metric (0-100). R[t][j] is the score on task j after step t of T.
Avg from unseen tasks: mean over the tasks the model was not fine-tuned on.
BWT = mean over j < T of (R[T][j] - R[j][j]); negative means forgetting.
Forgetting of task j = max over t < T of R[t][j], minus R[T][j].
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


def write_report(spec_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Render every section of the spec into the folder `out` (replaced atomically); return report.md."""
    spec = Spec(spec_path)
    tasks = spec.tasks()
    tables = []
    if spec.entries("single"):
        tables.append(single_table(spec, tasks))
    if spec.entries("multi"):
        tables.append(multi_table(spec, tasks))
    columns, seqs = sequences(spec, tasks)
    if seqs:
        tables += [sequential_table(columns, seqs), continual_table(columns, seqs)]
    with atomic_dir(out) as tmp:
        lines = ["# RECALL report", "", f"From `{spec.path}`.", "", DEFINITIONS]
        for table in tables:
            table.write_csv(tmp / f"{table.name}.csv")
            lines.append(table.markdown())
        if seqs:
            plot_forgetting({s.method: s.matrix for s in seqs}, columns, tmp / "forgetting.png")
            lines.append("### Scores over the task sequence (figure 5)\n\n![forgetting](forgetting.png)\n")
        for section in ("merge_weights", "similarity"):
            _layer_plots(spec, section, tmp, lines)
        write_json(tmp / "metrics.json", table_metrics(tables))
        with atomic_file(tmp / "report.md") as fh:
            fh.write("\n".join(lines))
    return Path(out) / "report.md"
