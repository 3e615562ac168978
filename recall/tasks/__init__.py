"""Tasks: raw records -> instruction prompts + reference answers, each with its metric."""

from recall.tasks.base import Example, Task, get_task, list_tasks

__all__ = ["Example", "Task", "get_task", "list_tasks"]
