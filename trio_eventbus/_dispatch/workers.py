"""Consumer tasks over bounded queues (:class:`~trio_eventbus._queue.BoundedQueue`), and the WorkerPool.

:class:`ChannelTasks` runs consumer tasks over queues of work items: ``(run, arg)`` pairs, as in
``nursery.start_soon(run, arg)``. Each task takes items in FIFO order and awaits ``run(arg)`` for one item at
a time (the router queues a subscription's pipeline with each delivery, so a lane serves every subscription
at no extra call per message). A task takes queued items without yielding to the scheduler in
between (it parks only on an empty queue), so a busy lane costs no extra scheduler passes; the queue bound
limits how long that can run without a checkpoint. :class:`WorkerPool` is ``workers`` tasks sharing one queue:
keyless messages run concurrently with no order between them.

Closing: :meth:`ChannelTasks.close_inputs` lets every task finish what its queue holds and exit (a ``put``
afterwards raises ``trio.ClosedResourceError``); :meth:`ChannelTasks.wait_finished` waits for that.
Cancellation (from outside, or :meth:`ChannelTasks.cancel`): a task cancelled mid-item hands the ``arg`` of the
item it held and of every item still queued to ``abandon`` (the bus naks those deliveries so the broker
redelivers them) before it exits.

Bytes: every item carries its size; the task releases it from the shared :class:`~.budget.ByteBudget` when the
item ends (``run`` returned or raised) or is abandoned, so a cancelled or closed bus holds no bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import trio

from .._queue import BoundedQueue
from .budget import ByteBudget

__all__ = ["ChannelTasks", "Work", "WorkerPool"]

A = TypeVar("A")
#: A work item ``(run, arg, size)``: ``run(arg)`` is awaited by the task that takes it; ``size`` bytes of the
#: :class:`~.budget.ByteBudget` are released when it ends.
Work: TypeAlias = tuple[Callable[[A], Awaitable[object]], A, int]
_NOTHING: Any = object()  # BoundedQueue.poll's "empty" marker


class ChannelTasks(Generic[A]):
    """Consumer tasks over queues of :data:`Work`: one task per entry of ``queues`` (see the module docstring)."""

    def __init__(
        self, queues: Sequence[BoundedQueue[Work[A]]], abandon: Callable[[A], None], name: str, budget: ByteBudget
    ) -> None:
        self._queues = list(queues)
        self._budget = budget
        self._abandon = abandon
        self._name = name
        self.busy = 0
        self.alive = 0
        self._finished = trio.Event()
        self._scopes: list[trio.CancelScope] = []
        self._cancelled = False

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every consumer task in ``nursery``; returns when all run."""
        for index, queue in enumerate(self._queues):
            await nursery.start(self._run, queue, name=f"{self._name}-{index}")

    async def _run(
        self,
        queue: BoundedQueue[Work[A]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.alive += 1
        task_status.started()
        held: Work[A] | None = None
        cancelled = False
        budget = self._budget
        release = budget.release
        scope = trio.CancelScope()
        self._scopes.append(scope)
        if self._cancelled:
            scope.cancel()
        try:
            with scope:
                while True:
                    # take queued items without a scheduler round trip; park only when the queue is empty
                    item = queue.poll(_NOTHING)
                    if item is _NOTHING:
                        if await queue.wait_readable():
                            continue
                        break
                    held = item
                    run, arg, size = item
                    self.busy += 1
                    try:
                        await run(arg)
                    finally:
                        self.busy -= 1
                    held = None
                    # ByteBudget.release, inline (once per message): wake the router at half the budget
                    budget.held -= size
                    if budget.waiting and budget.held <= budget.resume_at:
                        budget.wake()
            cancelled = scope.cancelled_caught  # by cancel()
        except trio.Cancelled:  # from outside (hard stop)
            cancelled = True
            raise
        finally:
            if held is not None:  # cancelled (or a bug raised) mid-item: its bytes are not held any more
                release(held[2])
            if cancelled:  # hand back the item we held and everything queued behind it
                if held is not None:
                    self._abandon(held[1])
                self._drain(queue)
            self.alive -= 1
            if self.alive == 0:
                self._finished.set()

    def _drain(self, queue: BoundedQueue[Work[A]]) -> None:
        while True:
            try:
                item = queue.get_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._budget.release(item[2])
            self._abandon(item[1])

    def depths(self) -> list[int]:
        """Items queued per distinct queue (not counting the ones being processed)."""
        return [len(q) for q in dict.fromkeys(self._queues)]

    def close_inputs(self) -> None:
        """No more items: tasks finish what is queued, then exit. Idempotent, does not await."""
        for queue in self._queues:
            queue.close()

    def cancel(self) -> None:
        """Cancel every task: each hands back (``abandon``) the item it held and everything queued."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()

    async def wait_finished(self) -> None:
        """Wait until every consumer task has exited."""
        if self.alive:
            await self._finished.wait()


class WorkerPool(ChannelTasks[A]):
    """``workers`` tasks over one bounded queue of ``buffer`` items; no order between items."""

    def __init__(self, workers: int, buffer: int, abandon: Callable[[A], None], budget: ByteBudget) -> None:
        self.queue: BoundedQueue[Work[A]] = BoundedQueue(buffer)
        super().__init__([self.queue] * workers, abandon, "teb-worker", budget)
