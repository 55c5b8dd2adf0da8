"""Tasks: one map from a task's name to its implementation (:class:`Task`); adding one is a
file and an entry here."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import UserError, did_you_mean
from .base import NonFiniteOutputs, Task, nonfinite_rows
from .classification import ClassificationTask
from .segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {
    ClassificationTask.name: ClassificationTask,
    SegmentationTask.name: SegmentationTask,
}


class TaskConfigError(UserError, ValueError):
    """An unknown task name or arguments its class does not take."""


def create_task(name: str, num_classes: int, task_args: dict[str, Any] | None = None) -> Task:
    """The task ``name`` for ``num_classes`` classes, with its own ``task_args``."""
    if name not in TASKS:
        raise TaskConfigError(
            f"unknown task {name!r}{did_you_mean(name, list(TASKS))} (known: {', '.join(TASKS)})"
        )
    cls = TASKS[name]
    unknown = sorted(set(task_args or {}) - set(inspect.signature(cls).parameters))
    if unknown:
        raise TaskConfigError(
            f"task {name!r} takes no {', '.join(unknown)} (model.{unknown[0]} or "
            f"model.task_args): set model.task to a task that does, or leave it out"
        )
    return cls(num_classes, **(task_args or {}))


__all__ = [
    "TASKS",
    "ClassificationTask",
    "NonFiniteOutputs",
    "SegmentationTask",
    "Task",
    "TaskConfigError",
    "create_task",
    "nonfinite_rows",
]
