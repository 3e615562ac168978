"""Quality benchmark results, collected from the pipeline runs of benchmarks/paper/<scenario>/.

A benchmark is a params file run through the pipeline users run (`bash benchmarks/paper/run.sh
sequential|single|multi`); its report stage writes <scenario>/metrics.json with every method's scores,
95% paired-bootstrap intervals and differences. This script only gathers them:

    .venv/bin/python benchmarks/quality.py [RUN...]

RUN is a benchmarks/paper/<scenario> folder of the checkout that ran it (default: each of this
checkout's that holds a metrics.json), so a benchmark run in another checkout is collected with that
checkout's commit; scenarios collected earlier from other runs are kept. Writes
benchmarks/results/quality.json (per scenario: the run's commit, checkout
and params, `n_test`, and per method `avg`, `avg_ci95`, `diff_vs_sft`, `unseen_avg` in single, `bwt`
and `bwt_ci95` in sequential), quality.md (one summary table per scenario) and
quality_report/<scenario>/ (the run's full report, with the params.yaml and dvc.lock it ran with).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_report, run_provenance  # noqa: E402

from recall.reporting.statistics import Interval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "benchmarks" / "paper"
RESULTS = ROOT / "benchmarks" / "results"
QUALITY = RESULTS / "quality.json"
SECTIONS = ("sequential", "single", "multi")  # of the report's metrics.json
STATS = (
    "avg",
    "avg_ci95",
    "unseen_avg",
    "unseen_avg_ci95",
    "bwt",
    "bwt_ci95",
    "diff_vs_sft",
    "best_other",
    "diff_vs_best_other",
)


def method_row(section: str, key: str) -> str | None:
    """The method a report row stands for: in single, its average over the experts ("All Average/<m>");
    in multi, "<setting>/<m>" (the setting is the run's `multi.with_base`)."""
    if key == "n_test":
        return None
    if section == "single":
        return key.split("/", 1)[1] if key.startswith("All Average/") else None
    return key.rsplit("/", 1)[-1]


def scenario_results(folder: Path) -> dict:
    """quality.json's scenarios from one run's metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    out = {}
    for section in (s for s in SECTIONS if s in metrics):
        rows = metrics[section]
        methods = {
            method_row(section, k): {s: v[s] for s in STATS if s in v}
            for k, v in rows.items()
            if method_row(section, k)
        }
        out[section] = {"n_test": rows["n_test"], "methods": methods}
    return out


def provenance(folder: Path) -> dict:
    edited = subprocess.run(["git", "-C", str(folder), "diff", "--quiet", "HEAD", "--", "params.yaml"]).returncode
    # params_edited: the params file differs from the commit's (its copy is in quality_report/)
    return run_provenance(folder, params_edited=edited != 0)


def cell(value, interval=None) -> str:
    if value is None:
        return "–"
    if not interval or None in interval:
        return f"{value:.2f}"
    return Interval(interval[0], value, interval[1]).text()


def difference(triple) -> str:
    """A stored [low, estimate, high] as the report prints it."""
    return Interval(*triple).text(difference=True) if triple else ""


def markdown(results: dict) -> str:
    lines = [
        "# Quality benchmark",
        "",
        "Collected by `benchmarks/quality.py` from the pipeline runs of `benchmarks/paper/<scenario>/`; "
        "intervals are 95% paired-bootstrap intervals over test examples; * marks a difference whose "
        "interval excludes 0, anything else is no difference. The verdict per scenario, why, and how each "
        "run was made: [quality_notes.md](quality_notes.md).",
        "",
    ]
    for scenario, data in results["scenarios"].items():
        run = results["runs"][data["run"]]
        lines += [
            f"## {scenario}",
            "",
            f"`{run['command']}` at commit {run['commit'][:10]}"
            + (" with its params.yaml edited (the copy beside the report)" if run["params_edited"] else "")
            + "; n per task: "
            + ", ".join(f"{t} {n}" for t, n in data["n_test"].items()),
            "",
        ]
        stats = (
            ["avg", "unseen_avg"] if scenario == "single" else ["avg", "bwt"] if scenario == "sequential" else ["avg"]
        )
        versus = "sft" if any("diff_vs_sft" in m for m in data["methods"].values()) else "best_other"
        header = ["Method", *stats, *[f"Δ {s} vs {versus.replace('_', ' ')}" for s in stats]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, m in data["methods"].items():
            row = [
                method,
                *[cell(m.get(s), m.get(f"{s}_ci95")) for s in stats],
                *[difference(m.get(f"diff_vs_{versus}", {}).get(s)) for s in stats],
            ]
            row[-1] += f" ({m['best_other']})" if versus == "best_other" and m.get("best_other") else ""
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", *verdict(data["methods"].get("recall"), stats)]
    return "\n".join(lines)


def verdict(recall: dict | None, stats: list[str]) -> list[str]:
    """RECALL against SeqFT and against the best other method, read off the intervals."""
    if not recall:
        return []

    def against(key: str) -> str:
        return "; ".join(f"{s} {difference(recall.get(key, {}).get(s))}" for s in stats)

    line = f"RECALL minus sft: {against('diff_vs_sft')}." if "diff_vs_sft" in recall else ""
    if recall.get("best_other"):
        line += f" RECALL minus the best other method ({recall['best_other']}): {against('diff_vs_best_other')}."
    return [line.strip(), ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="*", type=Path, help="benchmarks/paper/<scenario> folders (default: this checkout's)"
    )
    args = parser.parse_args()
    folders = [p.resolve() for p in args.runs] or sorted(p for p in PAPER.iterdir() if (p / "metrics.json").is_file())
    if not folders:
        print("no benchmarks/paper/<scenario>/metrics.json yet: run bash benchmarks/paper/run.sh <scenario>")
        return 2
    for folder in folders:
        if not (folder / "metrics.json").is_file():
            print(f"{folder} has no metrics.json: its run has not reached the report stage")
            return 2
    # Scenarios run elsewhere stay as collected (each names its run); the given runs replace their own.
    kept = json.loads(QUALITY.read_text()) if QUALITY.is_file() else {"runs": {}, "scenarios": {}}
    runs = {name: run for name, run in kept["runs"].items() if name not in {f.name for f in folders}}
    scenarios = {s: data for s, data in kept["scenarios"].items() if data["run"] in runs}
    for folder in folders:
        runs[folder.name] = provenance(folder)
        for scenario, data in scenario_results(folder).items():
            scenarios[scenario] = {"run": folder.name, **data}
        copy_report(folder, RESULTS / "quality_report" / folder.name)
    results = {"runs": runs, "scenarios": dict(sorted(scenarios.items(), key=lambda kv: SECTIONS.index(kv[0])))}
    QUALITY.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "quality.md").write_text(markdown(results))
    print(f"wrote {RESULTS / 'quality.json'} and quality.md from {', '.join(str(f) for f in folders)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
