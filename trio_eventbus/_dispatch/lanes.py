"""KeyedLanes: per-key ordering with concurrency across keys.

A key is mapped to a lane by ``fnv1a_32(key.encode()) % lanes``: stable across processes and languages (the
same mapping as the Go services of the seeds). Each lane is one task with one bounded queue of work items
(see :mod:`.workers`), so items with the same key are processed strictly in the order they were queued, one
at a time; different keys usually land on different lanes and run concurrently. A slow or retrying item holds
back only its own lane.

Backpressure: a full lane refuses ``put_nowait`` and parks ``put`` until it has drained to half its buffer
(the router, :mod:`.router`, is the only writer). Bytes are bounded across all lanes and the worker pool by
one :class:`~.budget.ByteBudget`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .._partition import fnv1a_32
from .._queue import BoundedQueue
from .budget import ByteBudget
from .workers import ChannelTasks, Work

__all__ = ["KeyedLanes", "fnv1a_32"]

A = TypeVar("A")
_CACHE_LIMIT = 65_536


class KeyedLanes(ChannelTasks[A]):
    """``lanes`` ordered lanes of ``buffer`` items each (see the module docstring).

    ``by_key`` memoises key → lane queue (bounded: cleared at 65,536 keys) so that the router finds the queue
    of a known key with one dict lookup; :meth:`queue_of` fills it.
    """

    def __init__(self, lanes: int, buffer: int, abandon: Callable[[A], None], budget: ByteBudget) -> None:
        # a full lane takes its sender back once half drained: under saturation the feeder then routes a run of
        # messages per wake-up instead of alternating one-for-one with the lane task
        queues = [BoundedQueue[Work[A]](buffer, resume_at=buffer // 2) for _ in range(lanes)]
        super().__init__(queues, abandon, "teb-lane", budget)
        self._lanes = lanes
        self.by_key: dict[str, BoundedQueue[Work[A]]] = {}

    def lane_of(self, key: str) -> int:
        """The lane index of ``key``."""
        return fnv1a_32(key.encode("utf-8")) % self._lanes

    def queue_of(self, key: str) -> BoundedQueue[Work[A]]:
        """The queue of the lane of ``key`` (memoised in :attr:`by_key`)."""
        queue = self.by_key.get(key)
        if queue is None:
            if len(self.by_key) >= _CACHE_LIMIT:
                self.by_key.clear()
            queue = self.by_key[key] = self._queues[self.lane_of(key)]
        return queue
