"""Partial table-1 spec: the single run's report spec, cut to the evaluations that finished."""
import sys
from pathlib import Path

import yaml

from recall.pipeline import stages
from recall.pipeline.params import load_params

runs = [Path(r) for r in sys.argv[2:]]  # single run folders (checkouts sharing the run)
params = load_params(runs[0] / "params.yaml")
spec = stages.report_spec(params, Path("/"))  # absolute paths
done = []
for entry in spec["single"]:
    rel = Path("/") / entry["metrics"]
    hits = [r / rel.relative_to(params.root) for r in runs if (r / rel.relative_to(params.root)).is_file()]
    if hits:
        done.append({**entry, "metrics": str(hits[0])})
print("done:", [(e["finetuned_on"], e["method"]) for e in done])
finished = {e["finetuned_on"] for e in done if sum(d["finetuned_on"] == e["finetuned_on"] for d in done) == len(params.methods)}
spec["single"] = [e for e in done if e["finetuned_on"] in finished]  # whole experts only: every method
for key in ("merge_weights", "similarity"):
    found = []
    for p in spec.get(key, []):
        rel = (Path("/") / p).relative_to(params.root)
        found += [str(r / rel) for r in runs if (r / rel).exists() and rel.parts[3] in finished][:1]
    spec[key] = found
Path(sys.argv[1]).write_text(yaml.safe_dump(spec, sort_keys=False))
print(f"{len(spec['single'])} evaluations of experts {sorted(finished)} -> {sys.argv[1]}")
