"""Testing support: the backend conformance suite, local broker management and pytest fixtures.

- :mod:`trio_eventbus.testing.conformance`: one suite of behaviour checks every backend must pass, selected
  by its :class:`~trio_eventbus.BackendFeatures`.
- :mod:`trio_eventbus.testing.servers`: start/stop real ``nats-server`` and Kafka processes (stdlib only).
- :mod:`trio_eventbus.testing.fixtures`: pytest fixtures over those servers.
- :func:`all_tasks`: every task of the current Trio run (for "no task left behind" checks).
"""

from __future__ import annotations

import trio

__all__ = ["all_tasks"]


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task alive in the current Trio run, found by walking the task tree from the root."""
    stack = [trio.lowlevel.current_root_task()]
    found: list[trio.lowlevel.Task] = []
    while stack:
        task = stack.pop()
        if task is None:
            continue
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found
