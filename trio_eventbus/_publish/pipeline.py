"""PublishPipeline: the bounded in-flight window, the publisher task, outcomes, results and flush.

Flow: ``submit`` takes a slot of the window (waiting while ``max_pending_publishes`` messages are in flight:
that is the backpressure), queues the message and returns; the publisher task hands queued messages to the
backend in batches of up to ``publish_batch`` (one call, one bridge crossing); the backend reports one
:class:`Outcome` per message; the results task turns outcomes into statistics, ``confirm`` wake-ups, the
``on_publish_result`` callback and :class:`PublishResult` values on the results channel, and only then frees
the window slot.

Results policy: results go to the channel only once someone has called :meth:`PublishPipeline.results`
(``EventBus.publish_results``); from then on a full results channel is backpressure (slots stay taken until
the reader catches up), so nothing is dropped while the bus runs. Results that cannot be delivered because
the close deadline passed with a full, unread channel are counted in ``results_dropped`` and logged.

Ordering: messages are handed to the backend in submit order. ``flush`` waits until every message submitted
before the call has its outcome (success or failure).

Lifecycle (driven by the bus, see :mod:`trio_eventbus._bus`): the results task runs in the bus's outer
nursery, outside the backend's block, shielded from cancellation: it ends only when the bus closes the
outcomes channel (:meth:`PublishPipeline.close_outcomes`), which it does after the backend's exit delivered
the last outcome, so outcomes that arrive during a hard stop still become their real results. The
publisher task runs in the bus's inner nursery: :meth:`~PublishPipeline.close_queue` lets it hand over what
is queued and exit; :meth:`~PublishPipeline.stop_sending` cancels it (close deadline or hard stop).
:meth:`~PublishPipeline.finish` then gives a failed result to every message without an outcome.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence

import attrs
import trio

from .._abc import Backend, Outcome, OutgoingMessage
from .._envelope import Envelope
from .._exceptions import PublishError
from .._options import BusOptions, PublishResult
from .results import ResultChannel

__all__ = ["PublishPipeline"]

logger = logging.getLogger("trio_eventbus")


@attrs.define(slots=True, eq=False)
class _Confirm:
    """A ``confirm=True`` publish waiting for its outcome."""

    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


class PublishPipeline:
    """See the module docstring."""

    def __init__(self, backend: Backend, options: BusOptions) -> None:
        self._backend = backend
        self._options = options
        window = options.max_pending_publishes
        self._free = window
        self._resume_at = max(1, min(window // 4, options.publish_batch))
        self._space = trio.lowlevel.ParkingLot()
        # submitted, not yet handed to the backend; at most ``window`` long (each entry holds a window slot)
        self._queue: collections.deque[OutgoingMessage] = collections.deque()
        self._queue_waiter = trio.lowlevel.ParkingLot()
        self._queue_closed = False
        self.outcomes_send, self._outcomes_recv = trio.open_memory_channel[Sequence[Outcome]](window)
        self._results: ResultChannel[PublishResult] | None = None
        self._results_scope = trio.CancelScope()
        self._drop_results = False
        self._pending: dict[int, OutgoingMessage] = {}  # by seq, until the outcome arrives
        self._confirms: dict[int, _Confirm] = {}
        self._seq = 0
        self._frontier = 0
        self._done_ahead: set[int] = set()
        self._flush_waiters: list[tuple[int, trio.Event]] = []
        self._sender_scope = trio.CancelScope()
        self._sender_done = trio.Event()
        self.published = 0
        self.failed = 0
        self.results_dropped = 0
        self.callback_errors = 0

    @property
    def pending(self) -> int:
        """Messages submitted whose outcome has not arrived yet."""
        return len(self._pending)

    async def start_results(self, nursery: trio.Nursery) -> None:
        """Start the results task (in the bus's outer nursery); it ends after :meth:`close_outcomes`."""
        await nursery.start(self._results_task, name="teb-results")

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the publisher task (in the bus's inner nursery, inside the backend's block)."""
        await nursery.start(self._publisher_task, name="teb-publisher")

    def submit_nowait(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str],
        key: str | None,
        message_id: str | None,
        envelope: Envelope | None,
    ) -> bool:
        """:meth:`submit` without ``confirm`` when a window slot is free at once; False (nothing queued) if not."""
        if self._free <= 0 or self._space:
            return False
        self._free -= 1
        self._enqueue(topic, body, headers, key, message_id, envelope)
        return True

    def _enqueue(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str],
        key: str | None,
        message_id: str | None,
        envelope: Envelope | None,
    ) -> int:
        """Queue a message for the publisher task, on a window slot already taken; its sequence number."""
        self._seq = seq = self._seq + 1
        self._pending[seq] = message = OutgoingMessage(seq, topic, body, headers, key, message_id, envelope)
        self._queue.append(message)
        if self._queue_waiter:
            self._queue_waiter.unpark()
        return seq

    async def submit(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str],
        key: str | None,
        message_id: str | None,
        envelope: Envelope | None,
        *,
        confirm: bool,
    ) -> None:
        """Queue one message; with ``confirm`` wait for its outcome and raise :class:`PublishError` on failure.

        Waits while the window is full. Cancellation while waiting for a slot queues nothing; cancellation
        while waiting for a confirmation leaves the message queued (its outcome still arrives as a result).
        """
        if self._free > 0 and not self._space:
            self._free -= 1
        else:
            await self._space.park()  # woken holding a slot (see _release)
        seq = self._enqueue(topic, body, headers, key, message_id, envelope)
        if confirm:
            waiter = self._confirms[seq] = _Confirm()
            await waiter.done.wait()
            if waiter.error is not None:
                raise PublishError(f"publish to {topic!r} failed: {waiter.error}") from waiter.error

    async def _publisher_task(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        limit = self._options.publish_batch
        queue = self._queue
        try:
            with self._sender_scope:
                while True:
                    if not queue:
                        if self._queue_closed:
                            return
                        await self._queue_waiter.park()
                        continue
                    batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
                    try:
                        await self._backend.send(batch)
                    except Exception as exc:
                        logger.warning("backend rejected a batch of %d messages: %r", len(batch), exc)
                        await self.outcomes_send.send([Outcome([m.seq for m in batch], exc)])
        finally:
            self._sender_done.set()

    async def _results_task(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            # Shielded: a hard stop must not end it before the backend's exit delivered the last outcomes. It
            # ends when the bus closes the outcomes channel, which the bus always does after the backend's
            # block; it cannot hang meanwhile: it waits only for outcomes and, until stop_blocking_on_results
            # (called on every close path before that), for room on the results channel.
            with trio.CancelScope(shield=True):
                async for outcomes in self._outcomes_recv:
                    for outcome in outcomes:
                        await self._complete(outcome.seqs, outcome.error)
        finally:
            self._outcomes_recv.close()

    async def _complete(self, seqs: Sequence[int], error: BaseException | None) -> None:
        """Account for the outcome of ``seqs``; awaits only to hand a result to a full results channel."""
        pending = self._pending
        confirms = self._confirms
        if error is None:
            self.published += len(seqs)
        else:
            self.failed += len(seqs)
        for seq in seqs:
            message = pending.pop(seq, None)
            if message is None:
                logger.error("backend reported a second outcome for message %d; ignored", seq)
                if error is None:
                    self.published -= 1
                else:
                    self.failed -= 1
                continue
            if confirms:
                waiter = confirms.pop(seq, None)
                if waiter is not None:
                    waiter.error = error
                    waiter.done.set()
            if message.envelope is not None and (self._results is not None or self._options.on_publish_result):
                await self._deliver_result(message, error)
            # free the window slot (parked publishers wake together once _resume_at slots are free)
            self._free += 1
            if self._free >= self._resume_at and self._space:
                self._release()
            # the flush frontier: the highest seq up to which every message has its outcome
            if seq == self._frontier + 1 and not self._done_ahead:
                self._frontier = seq
                if self._flush_waiters:
                    self._wake_flushers()
            else:
                self._advance(seq)

    def _release(self) -> None:
        """Wake parked publishers, each holding one of the free window slots."""
        space = self._space
        if space and self._free >= self._resume_at:
            count = min(len(space), self._free)
            self._free -= count
            space.unpark(count=count)

    async def _deliver_result(self, message: OutgoingMessage, error: BaseException | None) -> None:
        meta = message.envelope
        assert meta is not None
        result = PublishResult(
            event_id=meta.event_id,
            topic=message.topic,
            aggregate_id=meta.aggregate_id,
            event_type=meta.event_type,
            success=error is None,
            error=error,
        )
        callback = self._options.on_publish_result
        if callback is not None:
            try:
                callback(result)
            except Exception:
                self.callback_errors += 1
                logger.exception("on_publish_result callback failed for event %s", meta.event_id)
        channel = self._results
        if channel is None:
            return
        try:
            if channel.put_nowait(result):
                return
            if not self._drop_results:
                self._results_scope = scope = trio.CancelScope()
                with scope:
                    await channel.put(result)
                    return
        except trio.BrokenResourceError:
            pass
        self.results_dropped += 1
        logger.error("publish result for event %s dropped: results channel full at close or closed", meta.event_id)

    def _advance(self, seq: int) -> None:
        if seq != self._frontier + 1:
            self._done_ahead.add(seq)
            return
        frontier = seq
        ahead = self._done_ahead
        while frontier + 1 in ahead:
            frontier += 1
            ahead.remove(frontier)
        self._frontier = frontier
        if self._flush_waiters:
            self._wake_flushers()

    def _wake_flushers(self) -> None:
        frontier = self._frontier
        still = []
        for target, event in self._flush_waiters:
            if target <= frontier:
                event.set()
            else:
                still.append((target, event))
        self._flush_waiters = still

    async def flush(self) -> None:
        """Wait until every message submitted before this call has its outcome.

        Always a checkpoint (``checkpoint_if_cancelled``, then a shielded yield when nothing is pending, else the
        wait). Cancelled, it abandons only the wait: the messages keep going and get their outcomes.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        target = self._seq
        if self._frontier >= target:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        event = trio.Event()
        self._flush_waiters.append((target, event))
        await event.wait()

    def results(self) -> ResultChannel[PublishResult]:
        """The results channel (created on first call; later calls return the same channel)."""
        if self._results is None:
            self._results = ResultChannel(self._options.results_buffer)
        return self._results

    def close_queue(self) -> None:
        """No more submissions: the publisher task hands over what is queued, then exits."""
        self._queue_closed = True
        self._queue_waiter.unpark_all()

    def stop_sending(self) -> None:
        """Cancel the publisher task (close deadline passed, or hard stop): what it did not hand over gets a
        failed result from :meth:`finish`; a batch cut short in ``send`` is the backend's to report."""
        self._sender_scope.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the publisher task has exited."""
        await self._sender_done.wait()

    def close_outcomes(self) -> None:
        """The backend's block is over: no more outcomes. The results task drains the channel and ends."""
        self.outcomes_send.close()

    def stop_blocking_on_results(self) -> None:
        """Close deadline passed: count undeliverable results as dropped instead of waiting for a reader."""
        self._drop_results = True
        self._results_scope.cancel()

    async def finish(self) -> None:
        """After the results task ended: fail what never got an outcome, end the results channel.

        Every envelope still gets exactly one result: a publish the broker never answered (close deadline,
        hard stop) gets a failed one (:class:`PublishError`), and ``confirm`` waiters are woken with it.
        Never blocks (undeliverable results are dropped and counted), so it is safe under cancellation.
        """
        if self._pending:
            error = PublishError("the bus closed before the broker acknowledged this message")
            logger.warning("%d publishes closed without a broker ack; reporting them failed", len(self._pending))
            self._drop_results = True
            await self._complete(sorted(self._pending), error)
        if self._results is not None:
            self._results.close_writer()
