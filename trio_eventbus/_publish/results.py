"""ResultChannel: the bounded channel behind ``EventBus.publish_results()``, and the guard against the in-block
``async for`` that could never end.

The channel is a :class:`~trio_eventbus._queue.BoundedQueue` whose writer (the bus) is woken only after the
reader has drained half of the buffer, so that under saturation both sides keep working in batches instead of
one result per scheduler pass.

:class:`ReaderGuard` knows the task running the ``open_bus`` block and the bus's inner nursery while the block
runs; the channel asks it, before an ``async for`` starts (and before an iteration would wait), whether the
iterating task is the block's task or one of its descendants through a nursery opened inside the block (after
the bus's own). Such a loop would wait for the end of the channel, which comes only once the bus has closed,
which happens only once the block has ended: a deadlock, refused with :class:`ResultsReaderError`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import trio

from .._exceptions import ResultsReaderError
from .._options import PublishResult
from .._queue import BoundedQueue

__all__ = ["ChannelStatistics", "ReaderGuard", "ResultChannel", "new_result"]

T = TypeVar("T")

_IN_BLOCK = (
    "`async for` over publish_results() inside the `async with open_bus(...)` block would never end: the "
    "channel ends only when the bus closes, and the bus closes only after this block (and every nursery "
    "opened in it) has ended. Iterate it in a task of a nursery opened outside the open_bus block, or set "
    "BusOptions.on_publish_results to have the bus call you with batches of results; receive() and "
    "receive_nowait() work anywhere."
)


#: ``new_result(event_id, topic, aggregate_id, event_type, success, error, timestamp)``, equal to
#: ``PublishResult(...)`` with the same fields.
NewResult = Callable[[str, str, "str | None", "str | None", bool, "BaseException | None", _dt.datetime], PublishResult]


def _result_builder() -> NewResult:
    # One call per published message: set the slots of a new PublishResult directly (the frozen attrs __init__
    # goes through object.__setattr__ by name, about 1.5x the cost). Same value: PublishResult has no validators
    # or converters; its field names are checked here and the equality in the tests.
    names = ("event_id", "topic", "aggregate_id", "event_type", "success", "error", "timestamp")
    assert tuple(f.name for f in attrs.fields(PublishResult)) == names
    new = object.__new__
    slots: Mapping[str, Any] = vars(PublishResult)
    s_id, s_topic, s_aggregate, s_type, s_success, s_error, s_stamp = (slots[n].__set__ for n in names)

    def new_result(
        event_id: str,
        topic: str,
        aggregate_id: str | None,
        event_type: str | None,
        success: bool,
        error: BaseException | None,
        timestamp: _dt.datetime,
    ) -> PublishResult:
        result: PublishResult = new(PublishResult)
        s_id(result, event_id)
        s_topic(result, topic)
        s_aggregate(result, aggregate_id)
        s_type(result, event_type)
        s_success(result, success)
        s_error(result, error)
        s_stamp(result, timestamp)
        return result

    return new_result


new_result = _result_builder()


class ReaderGuard:
    """The ``open_bus`` block's task and the bus's inner nursery while the block runs (else ``None``)."""

    __slots__ = ("nursery", "task")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.nursery: trio.Nursery | None = None

    def enter(self, task: trio.lowlevel.Task, nursery: trio.Nursery) -> None:
        """The block starts: ``task`` runs it; nurseries it opens after ``nursery`` are inside the block."""
        self.task, self.nursery = task, nursery

    def leave(self) -> None:
        """The block has ended (the bus is closing): every reader is allowed."""
        self.task = self.nursery = None

    def check(self) -> None:
        """Raise :class:`ResultsReaderError` if the current task runs inside the block (see the module docstring)."""
        block = self.task
        if block is not None and _inside(block, self.nursery):
            raise ResultsReaderError(_IN_BLOCK)


def _inside(block: trio.lowlevel.Task, bus_nursery: trio.Nursery | None) -> bool:
    """Whether the current task is ``block`` or a descendant of it through a nursery opened after ``bus_nursery``.

    ``Task.child_nurseries`` lists a task's open nurseries outer first, so "opened inside the block" is "later in
    that list than the bus's inner nursery". Tasks of nurseries opened before the block (an enclosing
    ``trio.open_nursery()``) and the bus's own tasks are outside.
    """
    task = trio.lowlevel.current_task()
    if task is block:
        return True
    while (nursery := task.parent_nursery) is not None:
        parent = nursery.parent_task
        if parent is block:
            nurseries = block.child_nurseries
            if bus_nursery is None or nursery not in nurseries or bus_nursery not in nurseries:
                return False
            return nurseries.index(nursery) > nurseries.index(bus_nursery)
        task = parent
    return False


@attrs.frozen(slots=True)
class ChannelStatistics:
    """Live figures of a :class:`ResultChannel`: results ``buffered`` now, the ``capacity``, and whether the bus
    has ended the stream (``closed``)."""

    buffered: int
    capacity: int
    closed: bool


class ResultChannel(trio.abc.ReceiveChannel[T], Generic[T]):
    """The channel of :class:`~trio_eventbus.PublishResult` that ``EventBus.publish_results()`` returns.

    One result per envelope published (and per raw ``publish`` with a ``message_id``) after the channel was
    first requested, in the order the broker's verdicts arrive. The bus is the only writer; any number of tasks
    may read. Buffer: ``BusOptions.results_buffer`` results. While it is full the bus waits for the reader, and
    once the in-flight publish window is full too, ``publish`` waits (backpressure, never a silent drop; the bus
    logs one WARNING the first time). The bus resumes writing once the reader has drained half the buffer, so
    both sides work in batches.

    Reading follows ``trio.MemoryReceiveChannel``: FIFO; :meth:`receive` is a checkpoint and waits while empty;
    :meth:`receive_nowait` never waits (``trio.WouldBlock`` when empty). The stream ends when the bus has
    closed, after the last result: readers drain what is buffered, then get ``trio.EndOfChannel`` (an
    ``async for`` loop ends). :meth:`aclose` stops reading: later results are dropped and counted in
    ``Statistics.results_dropped``.

    Where to read: ``async for`` waits for the end of the stream, which comes only after the ``open_bus``
    block; so iterate in a task of a nursery opened *outside* the block::

        async with trio.open_nursery() as nursery, teb.open_bus(config) as bus:
            nursery.start_soon(mark_outbox_rows, bus.publish_results())  # async for inside: ends at close
            ...

    An ``async for`` in the block's task, or in a task of a nursery opened inside the block, raises
    :class:`~trio_eventbus.ResultsReaderError` instead of waiting forever (``receive`` / ``receive_nowait``
    work anywhere). ``BusOptions.on_publish_results`` is the alternative that needs no reader task at all.
    """

    def __init__(self, capacity: int, guard: ReaderGuard | None = None) -> None:
        self._queue: BoundedQueue[T] = BoundedQueue(capacity, resume_at=capacity // 2)
        #: The writer's fast path, once per result: :meth:`BoundedQueue.offer` (False when full;
        #: ``trio.ClosedResourceError`` once either side closed the channel, where :meth:`put_nowait` tells which).
        self.offer = self._queue.offer
        self._capacity = capacity
        self._guard = ReaderGuard() if guard is None else guard
        self._write_closed = False
        self._read_closed = False

    # -- writer side (the bus) --

    def put_nowait(self, item: T) -> bool:
        """Append ``item`` unless the buffer is full (False). Raises BrokenResourceError once the reader left."""
        if self._read_closed:
            raise trio.BrokenResourceError
        return self._queue.offer(item)

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

    @property
    def full(self) -> bool:
        """Whether the buffer holds ``capacity`` results."""
        return len(self._queue) >= self._capacity

    # -- reader side --

    def receive_nowait(self) -> T:
        """Take the oldest result; ``trio.WouldBlock`` when empty, ``trio.EndOfChannel`` after the end of stream
        (``trio.ClosedResourceError`` after :meth:`aclose`). Never waits, never yields."""
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

    def __aiter__(self) -> ResultChannel[T]:
        """Iterate until the end of the stream; :class:`~trio_eventbus.ResultsReaderError` inside the
        ``open_bus`` block (see the class docstring)."""
        if self._guard.task is not None:
            self._guard.check()
        return self

    async def __anext__(self) -> T:
        """The next result (``receive``); ``StopAsyncIteration`` at the end of the stream. Refuses, with
        :class:`~trio_eventbus.ResultsReaderError`, to wait inside the ``open_bus`` block."""
        if self._guard.task is not None and not self._queue and not self._write_closed:
            self._guard.check()
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

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
