"""Partial table-1 spec: the single run's report spec cut to the experts whose five models are evaluated.

    .venv/bin/python partial_spec.py OUT_SPEC RUN [RUN...]

RUN: <checkout>/benchmarks/paper/single folders sharing one run (stages ran in either); then
`recall report OUT_SPEC --out DIR`. Made this folder's spec.yaml while table 1 was still running.
"""

import sys
from pathlib import Path

import yaml

from recall.pipeline import stages
from recall.pipeline.params import load_params

runs = [Path(r) for r in sys.argv[2:]]
params = load_params(runs[0] / "params.yaml")
spec = stages.report_spec(params, Path("/"))  # paths relative to /, made absolute below


def found(path: str) -> Path | None:
    rel = (Path("/") / path).relative_to(params.root)
    return next((r / rel for r in runs if (r / rel).exists()), None)


done = [{**e, "metrics": str(found(e["metrics"]))} for e in spec["single"] if found(e["metrics"])]
count = {t: sum(e["finetuned_on"] == t for e in done) for t in stages.tasks(params)}
complete = {t for t, n in count.items() if n == len(params.methods)}
spec["single"] = [e for e in done if e["finetuned_on"] in complete]
for key in ("merge_weights", "similarity"):  # data/chains/recall/<task>/...
    spec[key] = [
        str(found(p)) for p in spec.get(key, []) if Path(p).parts[-3 if key == "merge_weights" else -2] in complete
    ]
Path(sys.argv[1]).write_text(yaml.safe_dump(spec, sort_keys=False))
print(f"{len(spec['single'])} evaluations of experts {sorted(complete)} -> {sys.argv[1]}")
