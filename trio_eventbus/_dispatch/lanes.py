"""KeyedLanes: per-key ordering with concurrency across keys.

A key is mapped to a lane by ``fnv1a_32(key.encode()) % lanes``: stable across processes and languages (the
same mapping as the Go services of the seeds). Each lane is one task with one bounded channel, so items with
the same key are processed strictly in the order they were sent, one at a time; different keys usually land on
different lanes and run concurrently. A slow or retrying item holds back only its own lane.

Backpressure: :meth:`KeyedLanes.send` waits while the lane's channel is full.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from .._queue import BoundedQueue
from .workers import ChannelTasks

__all__ = ["KeyedLanes", "fnv1a_32"]

T = TypeVar("T")
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_CACHE_LIMIT = 65_536


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data``."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


class KeyedLanes(ChannelTasks[T]):
    """``lanes`` ordered lanes of ``buffer`` items each (see the module docstring)."""

    def __init__(
        self,
        lanes: int,
        buffer: int,
        process: Callable[[T], Awaitable[None]],
        abandon: Callable[[T], None],
    ) -> None:
        # a full lane takes its sender back once half drained: under saturation the feeder then routes a run of
        # messages per wake-up instead of alternating one-for-one with the lane task
        queues = [BoundedQueue[T](buffer, resume_at=buffer // 2) for _ in range(lanes)]
        super().__init__(queues, process, abandon, "teb-lane")
        self._lanes = lanes
        self._lane_of: dict[str, int] = {}

    def lane_of(self, key: str) -> int:
        """The lane index of ``key`` (memoised in a bounded cache)."""
        lane = self._lane_of.get(key)
        if lane is None:
            if len(self._lane_of) >= _CACHE_LIMIT:
                self._lane_of.clear()
            lane = self._lane_of[key] = fnv1a_32(key.encode("utf-8")) % self._lanes
        return lane

    def queue_of(self, key: str) -> BoundedQueue[T]:
        """The queue of the lane of ``key``."""
        return self._queues[self.lane_of(key)]

    async def send(self, key: str, item: T) -> None:
        """Queue ``item`` on the lane of ``key``; waits while that lane is full."""
        queue = self._queues[self.lane_of(key)]
        try:
            queue.put_nowait(item)
        except trio.WouldBlock:
            await queue.put(item)
