"""Tasks declared in data, without code: a folder `<name>/` holding `task.yaml`, `train.jsonl` and
`test.jsonl`. task.yaml has the fields of `recall.tasks.base.TaskSpec`, e.g.

    format: classification
    template: "Ticket: {subject}\\n{body}\\nCategory:"
    answer: category
    labels: [billing, outage, account]

Reading a folder checks its spec and every row of both splits before any work starts; an error
names the file, the line and the field. The registry (`recall.tasks.registry`) declares what it reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recall.errors import RecallError, read_text
from recall.tasks.base import TaskSpec
from recall.tasks.formats import SPEC_FIELDS, SPLITS, TASK_FILE, JsonlTask, SpecError, make_task, parse_spec

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a task name is a file, stage and dataset name part


def read_spec(path: Path) -> TaskSpec:
    """The checked spec of a task.yaml; RecallError naming the file, line and field."""
    if not path.is_file():
        raise RecallError(f"{path} does not exist; a task folder holds {TASK_FILE}, train.jsonl and test.jsonl")
    try:
        source = read_text(path)
        node, raw = yaml.compose(source), yaml.safe_load(source)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise RecallError(
            f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML: {getattr(err, 'problem', None) or err}"
        ) from None
    if not isinstance(raw, dict):
        raise RecallError(f"{path}:1: expected a mapping of the fields {', '.join(SPEC_FIELDS)}")
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    labels = next((value for key, value in node.value if key.value == "labels"), None)
    if labels is not None:
        raw["labels"] = as_written(labels)
    try:
        return parse_spec(raw)
    except SpecError as err:
        raise RecallError(f"{path}:{lines.get(err.field, 1)}: field {err.field!r}: {err}") from None


def as_written(node: yaml.Node):
    """The labels field as the user wrote it: YAML 1.1 reads plain `yes`, `no`, `on`, `off`, `1.5` or `~` as
    booleans, numbers and null, but a label word is text (`[yes, no]` are BoolQ's). Integer data values
    (the keys of a mapping) stay integers: the data may hold them."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return [as_written(item) for item in node.value]
    return {
        yaml.safe_load(key.value) if key.tag.endswith(":int") else as_written(key): as_written(value)
        for key, value in node.value
    }


def read_task(folder: Path) -> JsonlTask:
    """The task the (resolved) `folder` declares, once its name, its spec and both splits are checked."""
    if not NAME.fullmatch(folder.name):
        raise RecallError(
            f"{folder}: {folder.name!r} cannot name a task; name its folder with letters, digits, _ and - only"
        )
    task = make_task(folder.name, read_spec(folder / TASK_FILE), folder=folder)
    for split in SPLITS:
        task.load(split)
    return task


def check_name(root: Path, name: str) -> None:
    """Refuse a name that is no folder name before any path is built from it (`../x` would read, and
    register, a folder outside `root`)."""
    if not NAME.fullmatch(name):
        raise RecallError(
            f"{name!r} is not a task name: a task is a folder of {root} named with letters, digits, _ and - only; "
            "see `recall tasks list`"
        )
