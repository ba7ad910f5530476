"""ResultChannel: the bounded channel behind ``EventBus.publish_results()``, with hysteresis.

A :class:`~trio_eventbus._queue.BoundedQueue` whose writer (the bus) is woken only after the reader has drained
half of the buffer, so that under saturation both sides keep working in batches instead of one result per
scheduler pass (see :mod:`trio_eventbus._queue`).

Semantics otherwise follow ``trio.MemoryReceiveChannel``: FIFO; ``receive`` is a checkpoint and waits while
empty; after the writer closes, the reader drains what is buffered and then gets ``EndOfChannel``; after the
reader closes (``aclose``), writes raise ``BrokenResourceError``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs
import trio

from .._queue import BoundedQueue

__all__ = ["ResultChannel"]

T = TypeVar("T")


@attrs.frozen(slots=True)
class ChannelStatistics:
    """Live figures of a :class:`ResultChannel`."""

    buffered: int
    capacity: int
    closed: bool


class ResultChannel(trio.abc.ReceiveChannel[T], Generic[T]):
    """See the module docstring. The bus is the only writer; any number of tasks may read."""

    def __init__(self, capacity: int) -> None:
        self._queue: BoundedQueue[T] = BoundedQueue(capacity, resume_at=capacity // 2)
        self._capacity = capacity
        self._write_closed = False
        self._read_closed = False

    # -- writer side (the bus) --

    def put_nowait(self, item: T) -> bool:
        """Append ``item`` unless the buffer is full (False). Raises BrokenResourceError once the reader left."""
        if self._read_closed:
            raise trio.BrokenResourceError
        try:
            self._queue.put_nowait(item)
        except trio.WouldBlock:
            return False
        return True

    async def put(self, item: T) -> None:
        """Append ``item``; while full, wait until the reader has drained half the buffer.

        Always a checkpoint. Cancelled (before or while waiting), nothing was appended.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            if self.put_nowait(item):
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            await self._queue.put(item)  # full: it parks, and that is the checkpoint
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError from None

    def close_writer(self) -> None:
        """End of stream: readers drain the buffer, then get ``EndOfChannel``."""
        self._write_closed = True
        self._queue.close()

    # -- reader side --

    def receive_nowait(self) -> T:
        """Take the oldest result; ``WouldBlock`` when empty, ``EndOfChannel`` after the end of stream."""
        if self._read_closed:
            raise trio.ClosedResourceError
        return self._queue.get_nowait()

    async def receive(self) -> T:
        """Take the oldest result, waiting while the channel is empty.

        Always a checkpoint. Cancelled, it took nothing (the result stays for the next ``receive``). At the end
        of the stream it raises ``trio.EndOfChannel`` after ``checkpoint_if_cancelled`` only, as trio's
        ``MemoryReceiveChannel.receive`` does.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            item = self.receive_nowait()
        except trio.WouldBlock:
            return await self._queue.get()  # parked: that was the checkpoint
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    async def aclose(self) -> None:
        """Stop reading: the bus counts later results as dropped. Always a checkpoint; done even if cancelled."""
        self._read_closed = True
        self._queue.close()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> ChannelStatistics:
        """Buffer use and state."""
        return ChannelStatistics(len(self._queue), self._capacity, self._write_closed)

    def __repr__(self) -> str:
        return f"<ResultChannel {len(self._queue)}/{self._capacity}{' closed' if self._write_closed else ''}>"
