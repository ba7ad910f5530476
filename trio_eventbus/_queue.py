"""BoundedQueue: a bounded FIFO between Trio tasks, leaner than a memory channel pair.

``put`` waits while the queue holds ``capacity`` items (backpressure), ``get`` waits while it is empty; both
sides wait (see "Waiting" below). A waiting ``put`` is woken once the queue has drained to ``resume_at`` items
(default: as soon as there is room). A higher-than-default gap is hysteresis: under saturation a writer and
a reader otherwise alternate one item per scheduler pass, and everything behind the writer degrades to one
item per wake-up. No statistics, no clones: it sits on the per-message path (keyed lanes, the worker pool,
the publish results channel).

Waiting: each side keeps its waiting tasks in a deque and wakes them with ``trio.lowlevel.reschedule`` (what a
``ParkingLot`` does, minus its bookkeeping: a park and a wake-up cost about 10,000 fewer instructions, and "is
anyone waiting" is the deque's truth value, not a Python call). A writer wakes one reader per item; a reader
wakes every waiting writer once the queue has drained to ``resume_at``.

Cancellation: a ``put`` cancelled while waiting added nothing; a ``get`` cancelled while waiting took nothing.
``close`` ends the stream: getters drain what is queued, then get ``trio.EndOfChannel``; puts raise
``trio.ClosedResourceError``.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

__all__ = ["BoundedQueue"]

T = TypeVar("T")
D = TypeVar("D")


class BoundedQueue(Generic[T]):
    """A bounded FIFO between Trio tasks (see the module docstring)."""

    __slots__ = ("_capacity", "_closed", "_getters", "_items", "_putters", "_resume_at")

    def __init__(self, capacity: int, *, resume_at: int | None = None) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._resume_at = capacity - 1 if resume_at is None else resume_at
        # the tasks waiting, first come first served (see "Waiting" in the module docstring)
        self._getters: collections.deque[Task] = collections.deque()
        self._putters: collections.deque[Task] = collections.deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        """Append ``item``; ``trio.WouldBlock`` when full, ``trio.ClosedResourceError`` after :meth:`close`."""
        if self._closed:
            raise trio.ClosedResourceError
        if len(self._items) >= self._capacity:
            raise trio.WouldBlock
        self._items.append(item)
        if self._getters:
            reschedule(self._getters.popleft())

    def offer(self, item: T) -> bool:
        """Append ``item`` unless the queue is full (False, nothing appended); ``trio.ClosedResourceError`` after
        :meth:`close`. :meth:`put_nowait` without an exception for a full queue (writers that fall back to
        waiting often)."""
        if self._closed:
            raise trio.ClosedResourceError
        items = self._items
        if len(items) >= self._capacity:
            return False
        items.append(item)
        if self._getters:
            reschedule(self._getters.popleft())
        return True

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the queue is full. Cancelled while waiting: nothing was added."""
        while True:
            try:
                self.put_nowait(item)
            except trio.WouldBlock:
                await _wait(self._putters)
            else:
                return

    def get_nowait(self) -> T:
        """Take the oldest item; ``trio.WouldBlock`` when empty, ``trio.EndOfChannel`` when closed and empty."""
        if self._items:
            item = self._items.popleft()
            if self._putters and len(self._items) <= self._resume_at:
                _wake_all(self._putters)
            return item
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def poll(self, default: D) -> T | D:
        """Take the oldest item, or return ``default`` when the queue is empty (closed or not); never raises."""
        items = self._items
        if items:
            item = items.popleft()
            if self._putters and len(items) <= self._resume_at:
                _wake_all(self._putters)
            return item
        return default

    async def get(self) -> T:
        """Take the oldest item, waiting while the queue is empty. Cancelled while waiting: nothing taken."""
        while True:
            try:
                return self.get_nowait()
            except trio.WouldBlock:
                await _wait(self._getters)

    async def wait_readable(self) -> bool:
        """Wait until an item is queued (True) or the queue is closed and empty (False); takes nothing.

        The consumer loops' way to wait without raising an exception per wake-up.
        """
        while not self._items:
            if self._closed:
                return False
            await _wait(self._getters)
        return True

    def close(self) -> None:
        """No more puts; getters drain what is queued, then get ``EndOfChannel``."""
        self._closed = True
        _wake_all(self._getters)
        _wake_all(self._putters)


async def _wait(waiters: collections.deque[Task]) -> None:
    """Wait in ``waiters`` until a :func:`reschedule` (by whoever pops this task from it). Cancelled while
    waiting: the task left ``waiters``."""
    task = current_task()
    waiters.append(task)

    def abort(_: object) -> Abort:
        waiters.remove(task)
        return Abort.SUCCEEDED

    await wait_task_rescheduled(abort)


def _wake_all(waiters: collections.deque[Task]) -> None:
    while waiters:
        reschedule(waiters.popleft())
