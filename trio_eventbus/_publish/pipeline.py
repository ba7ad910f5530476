"""PublishPipeline: the bounded in-flight window, the publisher task, outcomes, results and flush.

Flow: ``submit`` takes a slot of the window (waiting while ``max_pending_publishes`` messages, or
``max_pending_bytes`` bytes of bodies, are in flight: that is the backpressure), queues the message and
returns; the publisher task hands queued messages to the backend in batches of up to ``publish_batch`` (one
call, one bridge crossing); the backend reports one :class:`Outcome` per message; the results task turns
outcomes into statistics, ``confirm`` wake-ups and :class:`PublishResult` values (for the
``on_publish_results`` task and the results channel), and only then frees the window slot and its bytes.

The window: a message is admitted while fewer than ``max_pending_publishes`` are in flight and its body fits
in ``max_pending_bytes`` beside the bodies in flight; one message is always admitted when nothing is in flight
(so a body larger than the byte limit cannot stall). Waiting publishers are served first come, first served;
they resume together once ``min(window // 4, publish_batch)`` slots are free (hysteresis), each holding its slot
and bytes when woken.

Which messages have results: every envelope, and every raw publish with a ``message_id`` (``event_id`` is the
message id, ``aggregate_id`` the key, ``event_type`` None); raw publishes without an id and the bus's own
dead-letter publishes have none.

Results policy: results go to the channel only once someone has called :meth:`PublishPipeline.results`
(``EventBus.publish_results``); from then on a full results channel (or a full ``on_publish_results`` queue)
is backpressure (slots stay taken until the reader catches up), so nothing is dropped while the bus runs; the
first time it fills, one WARNING says so. Results that cannot be delivered (the reader closed the channel, or
it was still full once the close deadline passed, or the callback task was cancelled) are counted in
``results_dropped`` and logged in one line with the count when the results task ends.

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
import datetime as _dt
import logging
from collections.abc import Mapping, Sequence

import attrs
import trio

from .._abc import HARD_STOP_GRACE, Backend, Outcome, OutgoingMessage
from .._envelope import Envelope
from .._exceptions import PublishError
from .._options import BusOptions, PublishResult
from .callback import ResultsCallback
from .results import ReaderGuard, ResultChannel, new_result

__all__ = ["PublishPipeline"]

logger = logging.getLogger("trio_eventbus.publish")

#: What a results sink is called in the log lines.
_CHANNEL = "publish_results()"
_CALLBACK = "on_publish_results"


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
        self._max_bytes = options.pending_bytes_limit
        self._bytes = 0  # body bytes of the messages in flight
        # publishers waiting for room, first come first served: (task, body size); woken holding slot and bytes
        self._waiters: collections.deque[tuple[trio.lowlevel.Task, int]] = collections.deque()
        # submitted, not yet handed to the backend; at most ``window`` long (each entry holds a window slot)
        self._queue: collections.deque[OutgoingMessage] = collections.deque()
        self._queue_waiter = trio.lowlevel.ParkingLot()
        self._queue_closed = False
        self.outcomes_send, self._outcomes_recv = trio.open_memory_channel[Sequence[Outcome]](window)
        self._results: ResultChannel[PublishResult] | None = None
        self.guard = ReaderGuard()
        fn = options.on_publish_results
        self._callback = None if fn is None else ResultsCallback(fn, options.results_buffer)
        self._results_scope = trio.CancelScope()
        self._drop_results = False
        self._warned_full: set[str] = set()
        self._dropped_by: dict[str, int] = {}
        self._finished = False
        self._no_result: set[int] = set()  # seqs of raw publishes with a message_id that get no result
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
        self._results_dropped = 0

    @property
    def pending(self) -> int:
        """Messages submitted whose outcome has not arrived yet."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Body bytes of the messages submitted whose outcome has not arrived yet."""
        return self._bytes

    @property
    def results_dropped(self) -> int:
        """Results not delivered (channel closed by its reader or full at close; callback task ended)."""
        callback = self._callback
        return self._results_dropped + (0 if callback is None else callback.dropped)

    @property
    def callback_errors(self) -> int:
        """Exceptions raised by ``on_publish_results``."""
        return 0 if self._callback is None else self._callback.errors

    async def start_results(self, nursery: trio.Nursery) -> None:
        """Start the results task and the ``on_publish_results`` task (in the bus's outer nursery); they end
        after :meth:`close_outcomes`."""
        await nursery.start(self._results_task, name="teb-results")
        if self._callback is not None:
            await nursery.start(self._callback.run, name="teb-on-publish-results")

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
        """:meth:`submit` without ``confirm`` when the window has room at once; False (nothing queued) if not."""
        in_flight = self._bytes
        after = in_flight + len(body)
        if self._free <= 0 or self._waiters or (after > self._max_bytes and in_flight):
            return False
        self._free -= 1
        self._bytes = after
        # _enqueue, inline (once per message)
        self._seq = seq = self._seq + 1
        self._pending[seq] = message = OutgoingMessage(seq, topic, body, headers, key, message_id, envelope)
        queue = self._queue
        if not queue and self._queue_waiter:  # the publisher task parks only on an empty queue
            self._queue_waiter.unpark()
        queue.append(message)
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
        queue = self._queue
        if not queue and self._queue_waiter:  # the publisher task parks only on an empty queue
            self._queue_waiter.unpark()
        queue.append(message)
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
        result: bool = True,
    ) -> None:
        """Queue one message; with ``confirm`` wait for its outcome and raise :class:`PublishError` on failure.

        Waits while the window is full (count or bytes). Cancellation while waiting for room queues nothing;
        cancellation while waiting for a confirmation leaves the message queued (its outcome still arrives as a
        result). ``result=False``: a raw message with a ``message_id`` gets no :class:`PublishResult` (the
        bus's own dead-letter publishes).
        """
        size = len(body)
        if self._free > 0 and not self._waiters and (not self._bytes or self._bytes + size <= self._max_bytes):
            self._free -= 1
            self._bytes += size
        else:
            await self._wait_for_room(size)  # woken holding a slot and the bytes (see _release)
        seq = self._enqueue(topic, body, headers, key, message_id, envelope)
        if not result and envelope is None and message_id is not None:
            self._no_result.add(seq)
        if confirm:
            waiter = self._confirms[seq] = _Confirm()
            await waiter.done.wait()
            if waiter.error is not None:
                raise PublishError(f"publish to {topic!r} failed: {waiter.error}") from waiter.error

    async def _wait_for_room(self, size: int) -> None:
        """Park until :meth:`_release` hands this task a slot and ``size`` bytes. Cancelled: took nothing."""
        waiter = (trio.lowlevel.current_task(), size)
        self._waiters.append(waiter)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.remove(waiter)
            if self._waiters and self._free >= self._resume_at:
                self._release()  # a large message leaving the head may let the next ones in
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _release(self) -> None:
        """Wake waiting publishers in arrival order while a slot and their bytes are free (each woken one holds
        them); the first that does not fit stops the round (first come, first served)."""
        waiters = self._waiters
        limit = self._max_bytes
        while waiters and self._free > 0:
            task, size = waiters[0]
            if self._bytes and self._bytes + size > limit:
                return
            waiters.popleft()
            self._free -= 1
            self._bytes += size
            trio.lowlevel.reschedule(task)

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
                    if len(queue) <= limit:
                        batch = list(queue)
                        queue.clear()
                    else:
                        batch = [queue.popleft() for _ in range(limit)]
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
            # (called on every close path before that), for room on the results channel or callback queue.
            with trio.CancelScope(shield=True):
                async for outcomes in self._outcomes_recv:
                    for outcome in outcomes:
                        await self._complete(outcome.seqs, outcome.error)
                await self.finish()  # here, not after the outer nursery: the callback task waits for its end
        finally:
            self._outcomes_recv.close()

    async def _complete(self, seqs: Sequence[int], error: BaseException | None) -> None:
        """Account for the outcome of ``seqs``; awaits only to hand a result to a full results sink."""
        pending = self._pending
        confirms = self._confirms
        no_result = self._no_result
        results = self._results
        callback = self._callback
        success = error is None
        if success:
            self.published += len(seqs)
        else:
            self.failed += len(seqs)
        # one timestamp for the results of one outcome: the broker's verdict on them came at once
        stamp = _dt.datetime.now(_dt.UTC) if results is not None or callback is not None else None
        freed = 0  # body bytes freed by this call, subtracted from _bytes before a release and at the end
        try:
            for seq in seqs:
                message = pending.pop(seq, None)
                if message is None:
                    logger.error("backend reported a second outcome for message %d; ignored", seq)
                    if success:
                        self.published -= 1
                    else:
                        self.failed -= 1
                    continue
                if confirms:
                    waiter = confirms.pop(seq, None)
                    if waiter is not None:
                        waiter.error = error
                        waiter.done.set()
                message_id = message.message_id
                if message_id is not None:
                    if no_result and seq in no_result:
                        no_result.discard(seq)
                    elif stamp is not None:
                        envelope = message.envelope
                        if envelope is None:
                            result = new_result(message_id, message.topic, message.key, None, success, error, stamp)
                        else:
                            result = new_result(
                                envelope.event_id,
                                message.topic,
                                envelope.aggregate_id,
                                envelope.event_type,
                                success,
                                error,
                                stamp,
                            )
                        # put_nowait inline; awaits (_offer) only for a full or closed sink
                        if callback is not None:
                            try:
                                taken = callback.put_nowait(result)
                            except trio.BrokenResourceError:
                                taken = False
                            if not taken:
                                await self._offer(callback, _CALLBACK, result)
                                results = self._results  # publish_results() may have been called meanwhile
                        if results is not None:
                            try:
                                taken = results.offer(result)
                            except trio.ClosedResourceError:  # _offer tells why (reader gone, or closed)
                                taken = False
                            if not taken:
                                await self._offer(results, _CHANNEL, result)
                # free the window slot and bytes (parked publishers wake together once _resume_at slots are free)
                self._free += 1
                freed += len(message.body)
                if self._waiters and self._free >= self._resume_at:
                    self._bytes -= freed
                    freed = 0
                    self._release()
                # the flush frontier: the highest seq up to which every message has its outcome
                if seq == self._frontier + 1 and not self._done_ahead:
                    self._frontier = seq
                    if self._flush_waiters:
                        self._wake_flushers()
                else:
                    self._advance(seq)
        finally:
            self._bytes -= freed

    async def _offer(
        self, sink: ResultsCallback | ResultChannel[PublishResult], name: str, result: PublishResult
    ) -> None:
        """Hand ``result`` to ``sink``, waiting while it is full unless the close made waiting pointless."""
        try:
            if sink.put_nowait(result):
                return
            if sink is self._callback:  # the bus's own reader: waiting is bounded by its deadline at close
                if name not in self._warned_full:
                    self._warn_full(name)
                await sink.put(result)
                return
            if not self._drop_results:
                if name not in self._warned_full:
                    self._warn_full(name)
                self._results_scope = scope = trio.CancelScope()
                with scope:
                    await sink.put(result)
                    return
            reason = f"{name} still full at the close deadline"
        except trio.BrokenResourceError:
            reason = "publish_results() closed by its reader" if name == _CHANNEL else f"{name} task ended"
            if reason not in self._dropped_by:
                logger.warning("%s: publish results from now on are dropped (Statistics.results_dropped)", reason)
        self._results_dropped += 1
        self._dropped_by[reason] = self._dropped_by.get(reason, 0) + 1

    def _warn_full(self, name: str) -> None:
        self._warned_full.add(name)
        capacity = self._options.results_buffer
        if name == _CHANNEL:
            what = f"publish_results() holds {capacity} unread results (BusOptions.results_buffer)"
            hint = "read it in a task outside the open_bus block, use BusOptions.on_publish_results, or aclose() it"
        else:
            what = f"on_publish_results is behind: {capacity} results queued (BusOptions.results_buffer)"
            hint = "make the callback faster or raise results_buffer"
        logger.warning(
            "%s: the bus now waits for it, and publishing now waits once the in-flight window is full; %s "
            "(logged once)",
            what,
            hint,
        )

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
        """Wait until every message submitted before this call has its outcome and, with ``on_publish_results``,
        until the callback has been handed every result produced so far (unless called from the callback).

        Always a checkpoint (``checkpoint_if_cancelled``, then a shielded yield when nothing is pending, else the
        wait). Cancelled, it abandons only the wait: the messages keep going and get their outcomes.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        target = self._seq
        waited = False
        if self._frontier < target:
            event = trio.Event()
            self._flush_waiters.append((target, event))
            await event.wait()
            waited = True
        callback = self._callback
        if (
            callback is not None
            and callback.done < callback.enqueued
            and trio.lowlevel.current_task() is not callback.task
        ):
            await callback.wait_done(callback.enqueued)
            return
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def results(self) -> ResultChannel[PublishResult]:
        """The results channel (created on first call; later calls return the same channel)."""
        if self._results is None:
            self._results = ResultChannel(self._options.results_buffer, self.guard)
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
        """Close deadline passed (or hard stop): count results the channel cannot take as dropped instead of
        waiting for its reader; give the ``on_publish_results`` task its close deadline."""
        self._drop_results = True
        self._results_scope.cancel()
        if self._callback is not None:
            self._callback.limit(max(self._options.close_timeout, HARD_STOP_GRACE))

    async def finish(self) -> None:
        """After the last outcome: fail what never got one, end the results channel and the callback's queue.

        Every envelope still gets exactly one result: a publish the broker never answered (close deadline,
        hard stop) gets a failed one (:class:`PublishError`), and ``confirm`` waiters are woken with it.
        Never blocks (undeliverable results are dropped and counted), so it is safe under cancellation. The
        results task runs it when the outcomes end; the bus runs it again after the outer nursery (a no-op
        then), for start-up failures.
        """
        if self._finished:
            return
        self._finished = True
        if self._pending:
            error = PublishError("the bus closed before the broker acknowledged this message")
            logger.warning("%d publishes closed without a broker ack; reporting them failed", len(self._pending))
            self._drop_results = True
            await self._complete(sorted(self._pending), error)
        if self._results is not None:
            self._results.close_writer()
        if self._callback is not None:
            self._callback.close(max(self._options.close_timeout, HARD_STOP_GRACE))
        if self._dropped_by:
            reasons = ", ".join(f"{count} because {reason}" for reason, count in self._dropped_by.items())
            level = logging.ERROR if any("full" in reason for reason in self._dropped_by) else logging.WARNING
            logger.log(level, "%d publish results dropped (%s)", sum(self._dropped_by.values()), reasons)
