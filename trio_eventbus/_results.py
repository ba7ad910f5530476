"""ResultChannel: the bounded channel behind ``EventBus.publish_results()``, with hysteresis.

A Trio memory channel wakes a blocked sender for every single item the reader takes; under saturation the
writer and reader then alternate one item per scheduler pass, and the whole publish pipeline behind the
writer degrades to one message per wake-up. This channel parks its writer when full and wakes it only after
the reader has drained half of the buffer, so both sides keep working in batches.

Semantics otherwise follow ``trio.MemoryReceiveChannel``: FIFO; ``receive`` is a checkpoint and waits while
empty; after the writer closes, the reader drains what is buffered and then gets ``EndOfChannel``; after the
reader closes (``aclose``), writes raise ``BrokenResourceError``.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["ResultChannel"]

T = TypeVar("T")


@attrs.frozen(slots=True)
class ChannelStatistics:
    """Live figures of a :class:`ResultChannel`."""

    buffered: int
    capacity: int
    writer_waiting: bool
    readers_waiting: int
    closed: bool


class ResultChannel(trio.abc.ReceiveChannel[T], Generic[T]):
    """See the module docstring. The bus is the only writer; any number of tasks may read."""

    def __init__(self, capacity: int) -> None:
        self._buffer: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._resume_at = capacity // 2
        self._readers = trio.lowlevel.ParkingLot()
        self._writer = trio.lowlevel.ParkingLot()
        self._write_closed = False
        self._read_closed = False

    # -- writer side (the bus) --

    def put_nowait(self, item: T) -> bool:
        """Append ``item`` unless the buffer is full (False). Raises BrokenResourceError once the reader left."""
        if self._read_closed:
            raise trio.BrokenResourceError
        if len(self._buffer) >= self._capacity:
            return False
        self._buffer.append(item)
        if self._readers:
            self._readers.unpark()
        return True

    async def put(self, item: T) -> None:
        """Append ``item``; while full, wait until the reader has drained half the buffer."""
        while not self.put_nowait(item):
            await self._writer.park()
        await trio.lowlevel.checkpoint_if_cancelled()

    def close_writer(self) -> None:
        """End of stream: readers drain the buffer, then get ``EndOfChannel``."""
        self._write_closed = True
        self._readers.unpark_all()

    # -- reader side --

    def receive_nowait(self) -> T:
        """Take the oldest result; ``WouldBlock`` when empty, ``EndOfChannel`` after the end of stream."""
        if self._read_closed:
            raise trio.ClosedResourceError
        if self._buffer:
            item = self._buffer.popleft()
            if self._writer and len(self._buffer) <= self._resume_at:
                self._writer.unpark_all()
            return item
        if self._write_closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> T:
        """Take the oldest result, waiting while the channel is empty. Always a checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                item = self.receive_nowait()
            except trio.WouldBlock:
                await self._readers.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item

    async def aclose(self) -> None:
        """Stop reading: the bus counts later results as dropped."""
        self._read_closed = True
        self._buffer.clear()
        self._writer.unpark_all()
        self._readers.unpark_all()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> ChannelStatistics:
        """Buffer use and waiters."""
        return ChannelStatistics(
            len(self._buffer), self._capacity, bool(self._writer), len(self._readers), self._write_closed
        )

    def __repr__(self) -> str:
        return f"<ResultChannel {len(self._buffer)}/{self._capacity}{' closed' if self._write_closed else ''}>"
