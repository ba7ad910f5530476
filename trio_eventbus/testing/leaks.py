"""Task-leak checks that can fail: an instrument that watches every task spawned during a block.

Reading a nursery's ``child_tasks`` after the nursery has exited always gives nothing, so a check like
``bus.statistics().tasks_alive == 0`` after the ``open_bus`` block proves nothing. :func:`no_task_leaks`
instead registers a :class:`trio.abc.Instrument` for the duration of a block, records every task spawned
in it (whatever nursery it lives in: the bus's, the backend's, the bridge's) and, when the block ends,
raises :class:`AssertionError` naming each of those tasks that has not exited::

    with no_task_leaks() as tasks:
        async with teb.open_bus(config) as bus:
            ...
    assert tasks.spawned  # the check saw the bus's tasks

Use it around a block whose tasks must all be gone at its end (an ``open_bus`` block, a backend's
``open``), not around one that starts tasks in a nursery that outlives it. Self-contained: it imports
only Trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["TaskRecorder", "no_task_leaks"]


class TaskRecorder(trio.abc.Instrument):
    """Records the tasks spawned while it is registered, and which of them exited."""

    def __init__(self) -> None:
        self.spawned: list[trio.lowlevel.Task] = []
        self._exited: set[trio.lowlevel.Task] = set()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned.append(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self._exited.add(task)

    def alive(self) -> list[trio.lowlevel.Task]:
        """The recorded tasks that have not exited, in spawn order."""
        return [task for task in self.spawned if task not in self._exited]


@contextmanager
def no_task_leaks() -> Iterator[TaskRecorder]:
    """Record the tasks spawned in the block; at its end, fail if any of them is still alive.

    Raises :class:`AssertionError` naming the live tasks (only when the block itself did not raise). Must be
    used inside a Trio run; the instrument is removed on the way out in every case.
    """
    recorder = TaskRecorder()
    trio.lowlevel.add_instrument(recorder)
    try:
        yield recorder
    finally:
        trio.lowlevel.remove_instrument(recorder)
    if alive := recorder.alive():
        names = ", ".join(task.name for task in alive)
        raise AssertionError(f"{len(alive)} task(s) spawned in the block are still alive: {names}")
