"""Protocol results, collected from the pipeline runs of benchmarks/protocol/<suite>/.

A protocol is a params file with task orders and training seeds (`bash benchmarks/protocol/run.sh
SUITE`); its report stage writes <suite>/metrics.json: per method the pooled final average, BWT and
forgetting with two-level bootstrap intervals (runs, then test examples), paired differences to SeqFT,
the plain average and the best other method, wins, and the spread over orders. This script gathers them:

    .venv/bin/python benchmarks/protocol.py [SUITE_FOLDER...]

SUITE_FOLDER is a benchmarks/protocol/<suite> folder of the checkout that ran it (default: each of this
checkout's that holds a metrics.json). Writes benchmarks/results/protocol.json ({suite: the summary
with `run`: its commit, checkout, params and command}), protocol.md and protocol_report/<suite>/ (the
run's report, plot, params.yaml and dvc.lock); suites collected earlier from other runs are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_report, run_provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "benchmarks" / "protocol"
RESULTS = ROOT / "benchmarks" / "results"
PROTOCOL = RESULTS / "protocol.json"


def markdown(results: dict) -> str:
    lines = ["# Protocol benchmark", "", "Collected by `benchmarks/protocol.py`; each suite's full report follows.", ""]
    for suite, data in results.items():
        run = data["run"]
        report = (RESULTS / "protocol_report" / suite / "report.md").read_text().split("\n", 1)[1]
        report = report.replace("](protocol.png)", f"](protocol_report/{suite}/protocol.png)")
        lines += [f"## {suite}", "", f"`{run['command']}` at commit {run['commit'][:10]}.", report]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", type=Path, help="benchmarks/protocol/<suite> folders")
    args = parser.parse_args()
    folders = [p.resolve() for p in args.suites] or sorted(
        p for p in SUITES.iterdir() if (p / "metrics.json").is_file()
    )
    missing = [f for f in folders if not (f / "metrics.json").is_file()]
    if not folders or missing:
        print(f"no metrics.json in {missing or SUITES}: run bash benchmarks/protocol/run.sh SUITE to its report stage")
        return 2
    results = json.loads(PROTOCOL.read_text()) if PROTOCOL.is_file() else {}
    for folder in folders:
        results[folder.name] = {**json.loads((folder / "metrics.json").read_text()), "run": run_provenance(folder)}
        copy_report(folder, RESULTS / "protocol_report" / folder.name)
    PROTOCOL.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "protocol.md").write_text(markdown(results))
    print(f"wrote {PROTOCOL} and protocol.md from {', '.join(str(f) for f in folders)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
