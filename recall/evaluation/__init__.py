"""Evaluation of a model folder on tasks (built-in or declared in a folder) through OpenCompass.

`evaluate(model, tasks, out)` validates its inputs, writes each task's test examples as an OpenCompass
custom dataset, runs OpenCompass on them (label and letter tasks ranked by likelihood, the others
generated), and writes `out/examples/<task>.jsonl` (one scored record per test example),
`out/evaluation.json` (how prompts were rendered, each task's mode) and `out/metrics.json`:
`{"<task>": {"<metric>": score 0-100, ..., "nll": ...}, ...}`, each task's primary metric first.
"""

from recall.evaluation.pipeline import evaluate

__all__ = ["evaluate"]
