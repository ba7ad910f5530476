"""Consumer tasks over bounded memory channels, and the WorkerPool for keyless messages.

:class:`ChannelTasks` runs one task per receive channel; each task takes items in FIFO order from its channel
and awaits ``process(item)`` for one item at a time. A task takes queued items without yielding to the
scheduler in between (it parks only on an empty queue), so a busy lane costs no extra scheduler passes; the
queue bound limits how long that can run without a checkpoint. :class:`WorkerPool` is ``workers`` tasks sharing one
bounded channel: keyless messages run concurrently with no order between them.

Backpressure: ``send`` waits while the target channel is full. Closing: :meth:`ChannelTasks.close_inputs`
lets every task finish what its channel holds and exit; :meth:`ChannelTasks.wait_finished` waits for that.
Cancellation: a task cancelled mid-item hands the item it held and every item still queued to ``abandon``
(the bus naks them so the broker redelivers them) before it exits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

__all__ = ["ChannelTasks", "WorkerPool"]

T = TypeVar("T")


class ChannelTasks(Generic[T]):
    """One consumer task per receive channel (see the module docstring)."""

    def __init__(
        self,
        senders: Sequence[trio.MemorySendChannel[T]],
        receivers: Sequence[trio.MemoryReceiveChannel[T]],
        process: Callable[[T], Awaitable[None]],
        abandon: Callable[[T], None],
        name: str,
    ) -> None:
        self._senders = list(senders)
        self._receivers = list(receivers)
        self._process = process
        self._abandon = abandon
        self._name = name
        self.busy = 0
        self.alive = 0
        self._finished = trio.Event()
        self._scopes: list[trio.CancelScope] = []
        self._cancelled = False

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every consumer task in ``nursery``; returns when all run."""
        for index, receiver in enumerate(self._receivers):
            await nursery.start(self._run, receiver, name=f"{self._name}-{index}")

    async def _run(
        self,
        receiver: trio.MemoryReceiveChannel[T],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.alive += 1
        task_status.started()
        item: T | None = None
        held = cancelled = False
        scope = trio.CancelScope()
        self._scopes.append(scope)
        if self._cancelled:
            scope.cancel()
        try:
            with scope:
                while True:
                    # take queued items without a scheduler round trip; park only when the queue is empty
                    try:
                        item = receiver.receive_nowait()
                    except trio.WouldBlock:
                        try:
                            item = await receiver.receive()
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    held = True
                    self.busy += 1
                    try:
                        await self._process(item)
                    finally:
                        self.busy -= 1
                    held = False
            cancelled = scope.cancelled_caught  # by cancel()
        except trio.Cancelled:  # from outside (hard stop)
            cancelled = True
            raise
        finally:
            if cancelled:  # hand back the item we held and everything queued behind it
                if held:
                    self._abandon(item)  # type: ignore[arg-type]
                self._drain(receiver)
            receiver.close()
            self.alive -= 1
            if self.alive == 0:
                self._finished.set()

    def _drain(self, receiver: trio.MemoryReceiveChannel[T]) -> None:
        while True:
            try:
                self._abandon(receiver.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    def depths(self) -> list[int]:
        """Items queued per channel (not counting the one being processed)."""
        return [r.statistics().current_buffer_used for r in self._receivers[: len(self._senders)]]

    def close_inputs(self) -> None:
        """No more items: tasks finish what is queued, then exit. Idempotent, does not await."""
        for sender in self._senders:
            sender.close()

    def cancel(self) -> None:
        """Cancel every task: each hands back (``abandon``) the item it held and everything queued."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()

    async def wait_finished(self) -> None:
        """Wait until every consumer task has exited."""
        if self.alive:
            await self._finished.wait()


class WorkerPool(ChannelTasks[T]):
    """``workers`` tasks over one bounded channel of ``buffer`` items; no order between items."""

    def __init__(
        self,
        workers: int,
        buffer: int,
        process: Callable[[T], Awaitable[None]],
        abandon: Callable[[T], None],
    ) -> None:
        sender, receiver = trio.open_memory_channel[T](buffer)
        super().__init__(
            [sender],
            [receiver] + [receiver.clone() for _ in range(workers - 1)],
            process,
            abandon,
            "teb-worker",
        )
        self._sender = sender

    async def send(self, item: T) -> None:
        """Queue ``item``; waits while the queue is full. Raises ``trio.ClosedResourceError`` after close."""
        try:
            self._sender.send_nowait(item)
        except trio.WouldBlock:
            await self._sender.send(item)
