"""Export a task split as {"prompt", "response"} JSONL: the input format of `recall merge --data`
and of fine-tuning on arbitrary data."""

from __future__ import annotations

import json
from pathlib import Path

from recall.atomic import atomic_file
from recall.tasks.registry import get_task


def export_task(
    task: str, split: str, out: str | Path, data_dir: str | Path | None = None, limit: int | None = None
) -> int:
    """Write the examples of `task`/`split` to `out` (atomically); returns how many were written."""
    data_dir = Path(data_dir) if data_dir else None
    examples = get_task(task, data_dir).load(split, data_dir, limit)
    with atomic_file(out) as fh:
        for ex in examples:
            fh.write(json.dumps({"prompt": ex.prompt, "response": ex.answer}, ensure_ascii=False) + "\n")
    return len(examples)
