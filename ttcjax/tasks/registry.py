"""Every task by its YAML name, and :func:`task_from_dict`, which builds one from its YAML form."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ttcjax.tasks.base import Task
from ttcjax.tasks.builtin import ArithmeticTask, GSM8KTask, Math500Task, MathTask
from ttcjax.tasks.jsonl import JsonlTask

__all__ = ["TASKS", "task_from_dict"]

TASKS: Mapping[str, type[Task]] = MappingProxyType(
    {cls.name: cls for cls in (ArithmeticTask, GSM8KTask, MathTask, Math500Task, JsonlTask)})


def task_from_dict(data: Mapping[str, Any], source: str = "task") -> Task:
    """The task that ``data`` describes: ``{name: <one of TASKS>, <its options>..., prompt: {...}}``, as
    ``task.to_dict()`` writes it. Relative paths are kept as given. A missing or unknown name, or an option the
    task does not have, is a one-line ValueError naming ``source`` (e.g. the YAML file), the key and what is
    allowed."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a task is a mapping with 'name' (one of {', '.join(TASKS)}); got {data!r}")
    if "name" not in data:
        raise ValueError(f"{source}: missing 'name'; one of {', '.join(TASKS)}")
    name = data["name"]
    if name not in TASKS:
        raise ValueError(f"{source}: unknown task name {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name].from_dict(data, source)


def training_task(data: Mapping[str, Any], source: str = "task") -> Task:
    """A training config's task: any task's YAML form, or (without a name) the built-in task's fields."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source} must be a mapping such as {{name: gsm8k, path: data/gsm8k}} (or the built-in "
                         f"task's fields); got {data!r}")
    return task_from_dict(data if "name" in data else {"name": "arithmetic", **data}, source)
