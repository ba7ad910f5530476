"""EventBus and open_bus(): the public face, and the lifecycle that owns every task of the bus.

Lifecycle (structured concurrency): the shutdown order is the nesting order of ``open_bus``::

    outer nursery: the results task (outcomes -> results)
        async with backend.open(outcomes):          connection, ack handler, fetchers (the backend's nursery)
            inner nursery: publisher task, lanes, workers
                the user's block

Every task starts with ``nursery.start`` and the backend's ``open`` returns only when connected, so
``open_bus`` returns only when the bus is ready, and start-up errors (a broker that is down, wrong
credentials) come out of ``open_bus``.

Graceful close, on leaving the ``async with`` block normally or with an exception:

1. refuse new publishes and subscriptions (:class:`BusClosedError`, checked without awaiting);
2. stop every fetcher (``backend.stop_consuming()``);
3. lanes and workers finish what they hold, and ack it (dead letters included);
4. queued publishes are handed to the broker and every outcome so far is turned into its result;
   steps 2-4 share ``BusOptions.close_timeout``; past it, handlers are cancelled and their messages nak'ed,
   and the publisher task stops handing over. A task of the bus still alive once that is done is a bug (a
   handler that shields itself from cancellation, say): it is reported with a ``ResourceWarning`` naming it
   and cancelled, never silently;
5. the inner nursery ends; the backend's exit (shielded, bounded by its own deadline) delivers the
   outstanding outcomes and settlements and closes the connection;
6. the bus closes the outcomes channel; the results task turns the last outcomes into results and ends;
   every publish still without an outcome gets a failed result; the results channel ends. No task is left.

Hard stop: an outer cancellation (``Cancelled`` arriving in the block) cancels handlers at once; the lanes
nak what they held; nothing unhandled is acked (it is redelivered later: at-least-once). The cancellation
then unwinds the nesting: the backend's exit runs within the one hard-stop grace
(:data:`~trio_eventbus._abc.HARD_STOP_GRACE`), flushing acks of messages already handled and forwarding the
outcomes already known; the results task, shielded, still turns them into results; what has no outcome gets
a failed result. The bus itself has no timer for a hard stop.

Exception policy: handler exceptions never escape (they are retried and dead-lettered). An error of the bus's
own tasks (say, the broker going away for good) cancels the block and comes out of ``open_bus``; an exception
raised in the block comes out as itself. ``open_bus`` unwraps an ``ExceptionGroup`` that holds one exception,
so ``except teb.BackendUnavailable`` works; several unrelated errors stay grouped.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, NoReturn, Protocol

import trio

from ._abc import HARD_STOP_GRACE, Backend
from ._codec import encode_envelope
from ._dispatch.dispatcher import Dispatcher, Handler, Subscription
from ._envelope import _EMPTY_HEADERS, Envelope, Message, check_key_and_id, freeze_headers
from ._exceptions import (
    AlreadySubscribedError,
    BusClosedError,
    InvalidEnvelopeError,
    MessageTooLargeError,
)
from ._options import BusOptions, PublishResult, Statistics, TopicOptions, validate_group, validate_topic
from ._publish.pipeline import PublishPipeline
from ._publish.results import ResultChannel
from ._topics import TopicRegistry
from ._util import NoPublicConstructor

__all__ = ["BackendConfig", "EventBus", "open_bus"]

logger = logging.getLogger("trio_eventbus")


class BackendConfig(Protocol):
    """A backend configuration value (``MemoryConfig``, ``NatsConfig``, ``KafkaConfig``)."""

    def create_backend(self) -> Backend:
        """A new, unstarted backend for one bus."""


class EventBus(metaclass=NoPublicConstructor, factory="trio_eventbus.open_bus(config)"):
    """A running bus; obtain one from :func:`open_bus` (calling ``EventBus(...)`` raises ``TypeError``).

    Every method may be called from any task of the Trio run that opened the bus. See the module docstring for
    the lifecycle and :mod:`trio_eventbus._publish` / :mod:`trio_eventbus._dispatch` for delivery details.

    Every ``async`` method is a Trio checkpoint on every path (it checks for cancellation first, and yields once
    even when it need not wait), as trio's own channels are; each docstring says what a ``Cancelled`` from it
    leaves behind. Hot loops publish with the synchronous :meth:`publish_nowait` /
    :meth:`publish_envelope_nowait` and await only on ``trio.WouldBlock``.
    """

    def __init__(self, backend: Backend, options: BusOptions) -> None:
        self._backend = backend
        self._options = options
        self._topics = TopicRegistry(backend)
        self._publisher = PublishPipeline(backend, options)
        self._dispatcher = Dispatcher(backend, options, self._publisher, self._topics.ensure)
        self._subscriptions: dict[tuple[str, str], Subscription] = {}
        self._closing = False
        self._closed = False
        self._max_message_bytes = options.max_message_bytes
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        """Start the publisher task, lanes and workers in the inner nursery (inside the backend's block)."""
        self._nursery = nursery
        await self._publisher.start(nursery)
        await self._dispatcher.start(nursery)

    async def _close(self, nursery: trio.Nursery) -> None:
        """Graceful close (see the module docstring); shielded, the drain bounded by ``close_timeout``."""
        self._closing = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._options.close_timeout) as drain:
                await self._backend.stop_consuming()
                self._dispatcher.close_inputs()
                await self._dispatcher.wait_finished()
                self._publisher.close_queue()
                await self._publisher.flush()
            if drain.cancelled_caught:
                logger.warning(
                    "close_timeout (%.1fs) passed: cancelling %d handlers, %d publishes still pending",
                    self._options.close_timeout,
                    self._dispatcher.in_flight,
                    self._publisher.pending,
                )
            self._stop()
            with trio.move_on_after(HARD_STOP_GRACE):  # cancelled tasks end at once unless they shield
                await self._dispatcher.wait_finished()
                await self._publisher.wait_stopped()
        if leaked := list(nursery.child_tasks):
            nursery.cancel_scope.cancel()
            names = ", ".join(sorted(task.name for task in leaked))
            warnings.warn(
                f"{len(leaked)} bus task(s) still alive after the close deadline, cancelled: {names}",
                ResourceWarning,
                stacklevel=2,
            )

    def _hard_stop(self) -> None:
        """Outer cancellation: the handlers are cancelled already (their deliveries are nak'ed); refuse
        everything and stop blocking on the results reader. The backend's exit does the rest."""
        self._closing = True
        self._stop()

    def _stop(self) -> None:
        """Cancel what the close left running: handlers (held deliveries nak'ed), the publisher task."""
        self._publisher.close_queue()
        self._publisher.stop_blocking_on_results()
        self._dispatcher.cancel()
        self._publisher.stop_sending()

    # -- publishing ------------------------------------------------------------------------------------------
    #
    # Checkpoints: every async method of the bus is a Trio checkpoint on every path, in the shape of
    # trio.MemorySendChannel.send: ``checkpoint_if_cancelled()`` first (a cancelled caller gets Cancelled before
    # anything happens), then the synchronous path, then ``cancel_shielded_checkpoint()`` (a yield that cannot
    # undo what was done), or else the blocking path, which is itself a checkpoint. Hot loops that must not yield
    # per message use the synchronous ``publish_nowait`` / ``publish_envelope_nowait``.

    def _check_open(self) -> None:
        if self._closing:
            raise BusClosedError("the bus is closed" if self._closed else "the bus is closing")

    def _check_size(self, topic: str, body: bytes) -> None:
        if len(body) > self._options.max_message_bytes:
            raise MessageTooLargeError(
                f"message to {topic!r} is {len(body)} bytes; max_message_bytes is {self._options.max_message_bytes}"
            )

    def _raw(
        self,
        topic: str,
        data: bytes,
        key: str | None,
        headers: Mapping[str, str] | None,
        message_id: str | None,
    ) -> tuple[bytes, Mapping[str, str]]:
        """Check a raw publish: (body, frozen headers); BusClosedError or a ValueError subclass, nothing sent."""
        if self._closing:
            self._check_open()
        if type(data) is bytes:
            body = data
        elif isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
        else:
            raise InvalidEnvelopeError(f"data must be bytes, not {type(data).__name__}")
        if key is not None or message_id is not None:
            check_key_and_id(key, message_id)
        if len(body) > self._max_message_bytes:
            self._check_size(topic, body)
        return body, _EMPTY_HEADERS if headers is None else freeze_headers(headers)

    def _encoded(self, topic: str, envelope: Envelope) -> tuple[bytes, Mapping[str, str]]:
        """Check and encode an envelope publish: (body, headers); BusClosedError or a ValueError subclass."""
        if self._closing:
            self._check_open()
        if not isinstance(envelope, Envelope):
            raise InvalidEnvelopeError(f"expected an Envelope, got {type(envelope).__name__}")
        body, headers = encode_envelope(envelope)
        if len(body) > self._max_message_bytes:
            self._check_size(topic, body)
        return body, headers

    def _unready(self, topic: str) -> NoReturn:
        """A ``*_nowait`` publish to a topic not provisioned yet: InvalidTopicError, or WouldBlock."""
        validate_topic(topic)
        raise trio.WouldBlock(
            f"topic {topic!r} is not provisioned on the broker yet: the first publish to it must be awaited "
            "(or subscribe / configure_topic first)"
        )

    async def publish(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        confirm: bool = False,
    ) -> None:
        """Publish raw bytes.

        ``key`` orders messages: subscribers handle messages with the same key in publish order (keyless ones
        run on the worker pool). ``message_id`` lets the broker drop duplicates (NATS ``Nats-Msg-Id``).
        Returns once the message is in the in-flight window (waits while the window is full: backpressure).
        With ``confirm=True`` waits for the broker's ack and raises :class:`PublishError` on failure.
        Raises :class:`BusClosedError` after close, ``ValueError`` subclasses for bad input (nothing sent):
        :class:`InvalidHeaderError` for headers, ``key`` or ``message_id`` outside the one header rule every
        backend carries, or a header the bus writes itself (see ``_envelope.freeze_headers``).
        The first publish to a topic provisions it on the broker (once, see :meth:`configure_topic`).

        Always a checkpoint (it yields to other tasks once, even when the window has room). Cancellation: if it
        raises ``Cancelled``, nothing was queued; except that with ``confirm=True`` a cancel arriving while it
        waits for the broker's ack abandons only the wait: the message was queued and gets its outcome as any
        other. For hot loops, :meth:`publish_nowait` does the same without yielding.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        body, frozen = self._raw(topic, data, key, headers, message_id)
        if topic not in self._topics.ready:
            await self._topics.ensure(topic)
        if confirm or not self._publisher.submit_nowait(topic, body, frozen, key, message_id, None):
            await self._publisher.submit(topic, body, frozen, key, message_id, None, confirm=confirm)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def publish_nowait(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> None:
        """:meth:`publish` without waiting and without yielding: a synchronous call for hot loops.

        Queues the message into the in-flight window, or raises ``trio.WouldBlock`` and queues nothing: when
        the window is full (``BusOptions.max_pending_publishes`` in flight), or when ``topic`` has not been
        provisioned on the broker yet (that takes a broker round trip: await one :meth:`publish` to the topic,
        or :meth:`subscribe` / :meth:`configure_topic`, first). The usual loop falls back to the async form::

            try:
                bus.publish_nowait(topic, data, key=key)
            except trio.WouldBlock:
                await bus.publish(topic, data, key=key)   # waits for room (or provisions the topic)

        Raises :class:`BusClosedError` after close and the same ``ValueError`` subclasses as :meth:`publish`
        (:class:`InvalidTopicError` for a bad name), nothing sent. It never yields: a loop of these calls
        holds the scheduler until it awaits something.
        """
        body, frozen = self._raw(topic, data, key, headers, message_id)
        if topic not in self._topics.ready:
            self._unready(topic)
        if not self._publisher.submit_nowait(topic, body, frozen, key, message_id, None):
            raise trio.WouldBlock("the in-flight publish window is full")

    async def publish_envelope(self, topic: str, envelope: Envelope, *, confirm: bool = False) -> None:
        """Publish an envelope, keyed by its ``aggregate_id``, with ``event_id`` as the broker dedupe id.

        Exactly one :class:`PublishResult` per call that returns (on ``publish_results()`` once opened, and on
        ``BusOptions.on_publish_result``). Backpressure, ``confirm``, errors and cancellation as in
        :meth:`publish`: always a checkpoint; if it raises ``Cancelled``, nothing was queued (and no result
        will come), except for a cancel during a ``confirm=True`` wait for the ack (queued: its result comes).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        body, headers = self._encoded(topic, envelope)
        if topic not in self._topics.ready:
            await self._topics.ensure(topic)
        key = envelope.aggregate_id
        if confirm or not self._publisher.submit_nowait(topic, body, headers, key, envelope.event_id, envelope):
            await self._publisher.submit(topic, body, headers, key, envelope.event_id, envelope, confirm=confirm)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def publish_envelope_nowait(self, topic: str, envelope: Envelope) -> None:
        """:meth:`publish_envelope` without waiting and without yielding; semantics of :meth:`publish_nowait`.

        Queued (exactly one :class:`PublishResult` will come), or ``trio.WouldBlock`` and nothing queued (window
        full, or ``topic`` not provisioned yet), or :class:`BusClosedError` / a ``ValueError`` subclass.
        """
        body, headers = self._encoded(topic, envelope)
        if topic not in self._topics.ready:
            self._unready(topic)
        if not self._publisher.submit_nowait(topic, body, headers, envelope.aggregate_id, envelope.event_id, envelope):
            raise trio.WouldBlock("the in-flight publish window is full")

    async def flush(self) -> None:
        """Wait until every publish accepted before this call has its broker ack or failure.

        Always a checkpoint. Cancelled, it abandons only the wait: the publishes go on and get their outcomes.
        """
        await self._publisher.flush()

    def publish_results(self) -> ResultChannel[PublishResult]:
        """A receive channel of :class:`PublishResult`, one per envelope published after the first call.

        Open it before publishing. While it is open, a full channel (``BusOptions.results_buffer``) holds
        publish window slots: read it, or publishing stops (backpressure, never a silent drop); the bus resumes
        once the reader has drained half of it. The channel ends when the bus closes, after the last result.
        Several calls return the same channel. Closing it (``aclose``) stops delivery; later results are
        counted in ``Statistics.results_dropped``.
        """
        self._check_open()
        return self._publisher.results()

    # -- subscribing -----------------------------------------------------------------------------------------

    async def subscribe(
        self, topic: str, handler: Callable[[Message], Awaitable[object]], *, group: str | None = None
    ) -> None:
        """Handle every message of ``topic`` with ``handler(Message)`` (an async function).

        Ordering, retries and dead letters as described in :mod:`trio_eventbus._dispatch`. Within ``group``
        (default ``BusOptions.group``) each message goes to one subscriber; each group gets every message.
        Raises :class:`AlreadySubscribedError` for a second subscription of this bus to (topic, group).
        The first use of a topic provisions it on the broker.

        Always a checkpoint. Cancellation: if it raises ``Cancelled``, this bus records no subscription for
        (topic, group), so subscribing again is allowed (a cancel during the broker call may leave the topic, or
        a broker-side consumer, created); once it returns, messages flow to ``handler``.
        """
        await self._subscribe(topic, handler, group, envelopes=False)

    async def subscribe_envelope(
        self, topic: str, handler: Callable[[Envelope], Awaitable[object]], *, group: str | None = None
    ) -> None:
        """Like :meth:`subscribe`, decoding each message into an :class:`Envelope` (undecodable ones are
        dead-lettered at once); envelopes of one aggregate are handled in publish order. A checkpoint, with the
        cancellation semantics of :meth:`subscribe`."""
        await self._subscribe(topic, handler, group, envelopes=True)

    async def _subscribe(self, topic: str, handler: Handler, group: str | None, *, envelopes: bool) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        validate_topic(topic)
        group = self._options.group if group is None else validate_group(group)
        sub = self._dispatcher.subscription(topic, group, handler, envelopes=envelopes)
        if (topic, group) in self._subscriptions:
            raise AlreadySubscribedError(f"this bus already subscribes to {topic!r} in group {group!r}")
        self._subscriptions[(topic, group)] = sub
        try:
            await self._topics.ensure(topic)
            await self._backend.subscribe(topic, group, self._topics.options(topic), sub)
        except BaseException:
            del self._subscriptions[(topic, group)]
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- topics ----------------------------------------------------------------------------------------------

    async def configure_topic(self, topic: str, options: TopicOptions) -> None:
        """Set ``options`` for ``topic`` and apply them on the broker now (create or update).

        Always a checkpoint. Cancellation: if it raises ``Cancelled`` before the broker call, nothing changed;
        during the broker call, the options are stored and the next publish or subscribe to the topic applies
        them again (the broker may or may not have them already). Once it returns, they are applied.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        await self._topics.configure(topic, options)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def topic_config(self, topic: str) -> TopicOptions:
        """The options in force for ``topic`` (the defaults unless configured)."""
        validate_topic(topic)
        return self._topics.options(topic)

    # -- introspection ---------------------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """A frozen snapshot of counters and live state."""
        d = self._dispatcher
        c = d.counters
        p = self._publisher
        depths = d.lanes.depths()
        return Statistics(
            published=p.published,
            publish_failed=p.failed,
            pending_publishes=p.pending,
            handled=c.handled,
            handler_errors=c.handler_errors,
            retries=c.retries,
            dead_lettered=c.dead_lettered,
            dead_letter_failed=c.dead_letter_failed,
            discarded=c.discarded,
            undecodable=c.undecodable,
            redelivered=c.redelivered,
            in_flight=d.in_flight,
            lane_depth_max=max(depths, default=0),
            lanes_busy=d.lanes.busy,
            worker_queue_depth=sum(d.workers.depths()),
            buffered_bytes=d.router.budget.held,
            buffered_bytes_max=d.router.budget.peak,
            results_dropped=p.results_dropped,
            callback_errors=p.callback_errors,
            tasks_alive=0 if self._nursery is None else len(self._nursery.child_tasks),
            subscriptions=len(self._subscriptions),
            closing=self._closing,
            backend=self._backend.statistics(),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (
            f"<EventBus {state} backend={type(self._backend).__name__} subscriptions={s.subscriptions} "
            f"published={s.published} pending={s.pending_publishes} handled={s.handled} "
            f"in_flight={s.in_flight} lanes_busy={s.lanes_busy} lane_depth_max={s.lane_depth_max} "
            f"tasks={s.tasks_alive}>"
        )


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_bus(config: BackendConfig, *, options: BusOptions | None = None) -> AsyncIterator[EventBus]:
    """Open a bus on ``config``'s backend; leaving the block closes it (see the module docstring).

    Raises :class:`BackendUnavailable` when the broker cannot be reached or refuses the credentials.
    """
    options = BusOptions() if options is None else options
    if not isinstance(options, BusOptions):
        raise TypeError(f"options must be a BusOptions, not {type(options).__name__}")
    backend = config.create_backend()
    if (configure := getattr(backend, "configure_for_bus", None)) is not None:
        configure(options)  # optional backend hook: sizes derived from the bus's (the Kafka fetch byte bounds)
    bus = EventBus._create(backend, options)
    publisher = bus._publisher
    try:
        try:
            async with trio.open_nursery() as outer:
                await publisher.start_results(outer)
                try:
                    async with backend.open(publisher.outcomes_send), trio.open_nursery() as inner:
                        await bus._start(inner)
                        try:
                            yield bus
                        finally:
                            if _cancelled():
                                bus._hard_stop()
                            else:
                                await bus._close(inner)
                finally:
                    bus._closing = bus._closed = True
                    publisher.stop_blocking_on_results()  # (start-up failures: nothing else ran)
                    publisher.close_outcomes()  # the results task ends once it has handled the last outcomes
        finally:
            with trio.CancelScope(shield=True):
                await publisher.finish()
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise


def _cancelled() -> bool:
    """Whether the calling task is being cancelled (an outer cancellation, or a failed task of the bus)."""
    return trio.current_effective_deadline() == -math.inf
