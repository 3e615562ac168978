"""Tasks: raw records -> instruction prompts + reference answers, each with its metric."""

from recall.data import Example
from recall.tasks.base import Task
from recall.tasks.registry import get_task, list_tasks

__all__ = ["Example", "Task", "get_task", "list_tasks"]
