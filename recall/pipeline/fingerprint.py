"""What a pipeline run produced, as one hash per file of every DVC output: two runs (two runners, two
machines) made the same artifacts when their fingerprints are equal. Records of the run itself are
left out, as they differ on every run: OpenCompass's timestamped work folder, its log and its config
(which names the model by its files' modification times), and the fine-tune's measured time and speed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from recall.hashing import sha256_file
from recall.pipeline import plan
from recall.pipeline.params import load_params

RUN_RECORDS = {"opencompass", "opencompass.log", "opencompass_config.py"}  # file and folder names
TIMED_KEYS = ("train_seconds", "tokens_per_s")  # of train_metrics.json


def file_hash(path: Path) -> str:
    if path.name != "train_metrics.json":
        return sha256_file(path)
    record = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMED_KEYS}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def fingerprint(project: Path) -> dict[str, str]:
    """{file relative to the project: sha256} over the outputs of every stage of the project's pipeline."""
    project = project.resolve()
    hashes = {}
    for stage in plan.plan(load_params(project / "params.yaml")):
        for out in stage.outs:
            files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(project)
                if not RUN_RECORDS & set(f.relative_to(out.parent).parts):
                    hashes[str(rel)] = file_hash(f)
    return hashes
