"""The registry of tasks: the built-in ones (`recall.tasks.catalog`) and those declared in data, a
folder `<name>/` with `task.yaml`, `train.jsonl` and `test.jsonl` (`recall.tasks.declared`), found
under a task data folder by name. The built-in tasks come first: a folder cannot take their names.
"""

from __future__ import annotations

import os
from pathlib import Path

from recall.errors import RecallError
from recall.tasks.base import Task

_REGISTRY: dict[str, Task] = {}


def _builtin() -> None:
    """Hold the built-in tasks (imported only once a task is asked for)."""
    from recall.tasks.catalog import BUILTIN

    for task in BUILTIN:
        _REGISTRY.setdefault(task.name, task)


def register(task: Task) -> Task:
    """Add `task`, or return the registered task of that name if it is the same task (a task folder
    read again, or its copy in a pipeline's data); two different tasks of one name are an error."""
    _builtin()
    known = _REGISTRY.setdefault(task.name, task)
    if known is not task and (type(known), getattr(known, "spec", None)) != (type(task), getattr(task, "spec", None)):
        raise RecallError(
            f"two different tasks are named {task.name!r}: {known.source} and {task.source}; "
            "rename one of the task folders"
        )
    return known


def registered(name: str) -> Task | None:
    _builtin()
    return _REGISTRY.get(name)


def declare(folder: Path) -> Task:
    """Register the task `folder` declares, once its spec and both splits are checked."""
    from recall.tasks.declared import read_task

    folder = folder.resolve()
    known = registered(folder.name)
    if getattr(known, "folder", None) == folder:
        return known
    return register(read_task(folder))


def declare_in(root: Path, name: str) -> None:
    """Declare `root/<name>/` if it holds a task.yaml; a name that is no folder name is refused before any
    path is built from it (`../x` would read, and register, a folder outside `root`)."""
    from recall.tasks.declared import check_name
    from recall.tasks.formats import TASK_FILE

    check_name(root, name)
    if (root / name / TASK_FILE).is_file():
        declare(root / name)


def declare_all(root: Path) -> list[Task]:
    """Declare every task folder in `root`."""
    from recall.tasks.formats import TASK_FILE

    if not root.is_dir():
        raise RecallError(f"{root} is not a folder; give the folder that holds the <task>/{TASK_FILE} folders")
    return [declare(folder) for folder in sorted(root.iterdir()) if (folder / TASK_FILE).is_file()]


def list_tasks(data_dir: str | os.PathLike | None = None) -> list[Task]:
    """Every task: the built-in ones, and those declared in `data_dir`."""
    _builtin()
    if data_dir is not None:
        declare_all(Path(data_dir))
    return list(_REGISTRY.values())


def get_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """The task `name`, declared by `data_dir/<name>/task.yaml` if that exists, else registered."""
    _builtin()
    if data_dir is not None:
        declare_in(Path(data_dir), name)
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise RecallError(
            f"unknown task {name!r}; known tasks: {known} (see `recall tasks list`). A task of your own is a "
            "folder <name>/ holding task.yaml, train.jsonl and test.jsonl in the data folder (see the README)"
        ) from None
