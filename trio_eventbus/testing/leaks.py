"""TaskLeakWatch: a Trio instrument that records the tasks a bus spawns and finds those still alive after it.

``bus.statistics().tasks_alive`` read after the ``open_bus`` block counts the children of a nursery that has
already exited: it is always 0 and cannot catch a leak. This instrument watches the whole run instead: while
it is installed, it records

- every task spawned by a task it already recorded, whichever nursery it goes to (the bus's own nurseries,
  the system nursery, a nursery that belongs to someone else);
- every task the *owner* task (the one that opens the bus, and runs the bus's methods) spawns into a nursery
  that did not exist when the watch began (the bus's nurseries) or into the system nursery
  (``trio.lowlevel.spawn_system_task``).

After the ``open_bus`` block, :meth:`TaskLeakWatch.leaks` lists the recorded tasks that have not exited yet.

Not recorded: tasks the owner spawns into a nursery that already existed when the watch began — the test's
own helpers (a results reader started from the bus block into an outer nursery, which outlives the bus by
design), and tasks of *other* buses opened earlier by the same task (``other_bus.subscribe`` spawns its
fetcher from the owner task into that bus's nursery). (A ``nursery.start`` spawns the task in a new temporary
nursery first, so it is recorded: use ``start_soon`` for helpers that outlive the bus in a watched block.)

Usage::

    async with watch_task_leaks() as watch, teb.open_bus(config) as bus:
        ...
    # leaving the watch asserts: at least one task was recorded, none is still alive

The instrument runs synchronously inside Trio's scheduler on every spawn and exit in the run, which costs a
few dictionary lookups per task; no task is spawned per message, so the bus's hot path is unaffected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["TaskLeakWatch", "watch_task_leaks"]


class TaskLeakWatch(trio.abc.Instrument):
    """Records the tasks spawned by ``owner`` (and, transitively, by them); see the module docstring."""

    def __init__(self, owner: trio.lowlevel.Task) -> None:
        self._owner = owner
        self._preexisting = frozenset(_nurseries_except_the_system_nursery())
        self._spawner: dict[trio.lowlevel.Task, trio.lowlevel.Task] = {}  # recorded task -> who spawned it
        self._alive: set[trio.lowlevel.Task] = set()

    @property
    def recorded(self) -> int:
        """How many tasks were recorded so far."""
        return len(self._spawner)

    @property
    def spawned(self) -> list[trio.lowlevel.Task]:
        """The recorded tasks, in spawn order (alive or not)."""
        return list(self._spawner)

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        try:
            spawner = trio.lowlevel.current_task()
        except RuntimeError:  # spawned from outside any task (Trio's own start-up): not ours
            return
        if spawner is self._owner:
            if task.parent_nursery in self._preexisting:
                return  # the owner's own helper in a nursery it already had: outlives the bus by design
        elif spawner not in self._spawner:
            return
        self._spawner[task] = spawner
        self._alive.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self._alive.discard(task)

    def leaks(self) -> list[trio.lowlevel.Task]:
        """Recorded tasks that are still alive, in spawn order."""
        return [task for task in self._spawner if task in self._alive]

    def describe(self, tasks: list[trio.lowlevel.Task]) -> str:
        """One line per task: its name, who spawned it and the task that owns its nursery."""
        lines = []
        for task in tasks:
            nursery = task.parent_nursery
            owner = nursery.parent_task.name if nursery is not None else "?"
            lines.append(f"{task.name} (spawned by {self._spawner[task].name}, in a nursery of {owner})")
        return "; ".join(lines)


def _nurseries_except_the_system_nursery() -> list[trio.Nursery]:
    """Every nursery open in the run now, walking the task tree from the root, except the root's own."""
    root = trio.lowlevel.current_root_task()
    found: list[trio.Nursery] = []
    stack = [] if root is None else [root]
    while stack:
        task = stack.pop()
        for nursery in task.child_nurseries:
            if task is not root:
                found.append(nursery)
            stack.extend(nursery.child_tasks)
    return found


@asynccontextmanager
async def watch_task_leaks() -> AsyncIterator[TaskLeakWatch]:
    """Install a :class:`TaskLeakWatch` for the current task; on a normal exit, assert that it recorded at
    least one task (the watch saw the bus start) and that none of them is still alive.

    The instrument is removed on every exit path. An exception leaving the block is not masked.
    """
    watch = TaskLeakWatch(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(watch)
    try:
        yield watch
    finally:
        trio.lowlevel.remove_instrument(watch)
    assert watch.recorded > 0, "the leak watch recorded no task: it did not see the bus start"
    leaked = watch.leaks()
    assert not leaked, f"{len(leaked)} task(s) still alive after the bus closed: {watch.describe(leaked)}"
