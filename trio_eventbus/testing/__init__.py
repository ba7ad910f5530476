"""Testing support: the backend conformance suite, local broker management and pytest fixtures.

- :mod:`trio_eventbus.testing.conformance`: one suite of behaviour checks every backend must pass, as a class
  (``BackendConformance``) a backend's tests subclass; its :class:`~trio_eventbus.BackendFeatures` select the
  checks, and a lacking feature is a skip with the reason.
- :mod:`trio_eventbus.testing.fake`: ``FakeBackend``, a scriptable double of the backend seam whose broker
  acks only when the test releases them (for tests of the bus's own machinery; applications use the memory
  backend).
- :mod:`trio_eventbus.testing.servers`: start/stop real ``nats-server`` and Kafka processes (stdlib only).
- :mod:`trio_eventbus.testing.fixtures`: pytest fixtures over those servers.
- :mod:`trio_eventbus.testing.leaks`: ``watch_task_leaks()``, a Trio instrument that fails when a task spawned
  while a bus was open outlives it (reading a nursery after it exited cannot fail).
- :func:`all_tasks`: every task of the current Trio run (for "no task left behind" checks).
- :func:`collect`: drain a channel (such as ``publish_results()``) into a list, from a nursery outside the bus.
"""

from __future__ import annotations

from typing import TypeVar

import trio

from .._util import fixup_module_metadata

__all__ = ["all_tasks", "collect"]

T = TypeVar("T")


async def collect(channel: trio.abc.ReceiveChannel[T], into: list[T]) -> None:
    """Append everything ``channel`` yields to ``into`` until it ends (e.g. ``bus.publish_results()``)."""
    async with channel:
        async for item in channel:
            into.append(item)


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


fixup_module_metadata(__name__, globals())
