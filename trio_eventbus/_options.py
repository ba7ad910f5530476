"""Frozen option and result values: BusOptions, RetryPolicy, DeadLetterPolicy, TopicOptions, PublishResult,
Statistics.

Every value is an immutable attrs class; change one with ``attrs.evolve``. Sizes are validated at
construction and raise :class:`InvalidOptionError` (a ``ValueError``), so a bad option never reaches a
running bus.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import attrs

from . import _validate as v
from ._exceptions import InvalidOptionError
from ._statistics import BackendStatistics
from ._validate import validate_group, validate_topic

__all__ = [
    "BusOptions",
    "DeadLetterPolicy",
    "PublishResult",
    "RetryPolicy",
    "Statistics",
    "TopicOptions",
    "validate_group",
    "validate_topic",
]

#: ``BusOptions.max_buffered_bytes`` when ``None``: this many messages of ``max_message_bytes``.
BUFFERED_MESSAGES_DEFAULT = 64

_positive_int = v.positive_int
_optional_positive_int = v.optional(v.positive_int)
_positive_float = v.positive_float
_optional_positive_float = v.optional(v.positive_float)
_non_negative_float = v.non_negative_float
_optional_async_callable = v.optional(v.async_callable)
_optional_pending_bytes = v.optional(v.at_least_field("max_message_bytes"))
_dead_letter_suffix = v.optional(v.matches(r"[A-Za-z0-9_.\-]+", "None or a non-empty str of A-Z a-z 0-9 _ . -"))


@attrs.frozen(slots=True, kw_only=True)
class RetryPolicy:
    """How a failing handler is retried before its message is dead-lettered.

    Attempt ``n`` (1-based) that fails waits ``min(initial_backoff * multiplier**(n-1), max_backoff)``
    seconds before attempt ``n+1``; after ``max_attempts`` failed attempts the message is dead-lettered and
    acked. ``strategy="in_place"`` (default) sleeps inside the lane or worker holding the message, which keeps
    per-key order (later messages of the same key wait) and blocks no other lane. ``strategy="redeliver"``
    hands the message back to the broker (nak with the backoff delay) and frees the lane at once: other
    messages of the same key may overtake it. Backends without redelivery support use in-place retries.

    ``non_retryable``: exception types (``Exception`` subclasses, matched with ``isinstance``) that are never
    retried: the first attempt that raises one is dead-lettered at once (reason ``non-retryable``), with no
    backoff sleep, so the lane is freed immediately. A handler can also say so itself by raising
    :class:`~trio_eventbus.NonRetryableError` (``raise teb.NonRetryableError("bad total") from exc``), whatever
    the policy. The backoff is capped at ``max_backoff`` however large ``multiplier`` is (never an overflow).
    """

    max_attempts: int = attrs.field(default=5, validator=_positive_int)
    initial_backoff: float = attrs.field(default=0.1, validator=_non_negative_float)
    max_backoff: float = attrs.field(default=10.0, validator=_non_negative_float)
    multiplier: float = attrs.field(default=2.0, validator=_positive_float)
    strategy: Literal["in_place", "redeliver"] = attrs.field(
        default="in_place", validator=v.one_of("in_place", "redeliver")
    )
    non_retryable: tuple[type[Exception], ...] = attrs.field(default=(), validator=v.exception_types)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), at most ``max_backoff``."""
        if self.initial_backoff == 0:
            return 0.0
        exponent = min(attempt - 1, 64)
        try:
            delay = self.initial_backoff * self.multiplier**exponent
        except OverflowError:  # multiplier**exponent beyond a float: far beyond any max_backoff
            return float(self.max_backoff)
        return float(min(delay, self.max_backoff))


@attrs.frozen(slots=True, kw_only=True)
class DeadLetterPolicy:
    """Where a message goes once it will not be handled, and what happens to its key afterwards.

    - ``suffix``: dead letters of ``topic`` go to ``topic + suffix`` (``.dlq``). ``None`` disables
      dead-lettering: a message that exhausts its attempts is then acked, logged at ERROR with its traceback
      and counted in ``Statistics.discarded`` (never silently).
    - ``after``: what happens to a key after one of its messages was dead-lettered. ``"continue"`` (default):
      its later messages are handled as usual (the failed one is simply missing from the key's sequence).
      ``"park"``: the key is parked on this subscription: its later messages are not handled; each goes, in
      order, to the same dead-letter topic with ``X-DLQ-Reason: parked`` and is settled (TERM), so it never
      blocks the lane or other keys, until an operator calls :meth:`EventBus.release_key`. Keyless messages
      are never parked. Parking needs a dead-letter topic (``suffix`` not ``None``).
    - ``max_parked_keys``: the most keys one subscription parks; past it, a key whose message was
      dead-lettered is logged at ERROR and not parked (its later messages flow), rather than let the set grow.

    The parked set lives in the bus instance: a restart (or another instance of the group) does not know it,
    so later messages of a parked key are handled there again; the parked messages themselves are safe in the
    dead-letter topic. With ``RetryPolicy(strategy="redeliver")`` later messages of a key may overtake the
    failing one before it is dead-lettered (as they may without parking).
    """

    suffix: str | None = attrs.field(default=".dlq", validator=_dead_letter_suffix)
    after: Literal["continue", "park"] = attrs.field(default="continue", validator=v.one_of("continue", "park"))
    max_parked_keys: int = attrs.field(default=10_000, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.after == "park" and self.suffix is None:
            raise InvalidOptionError(
                "after='park' must have a dead-letter topic (suffix=None discards): the parked messages are kept there",
                field="after",
            )


@attrs.frozen(slots=True, kw_only=True)
class TopicOptions:
    """How a topic is provisioned on the broker.

    ``persistent`` topics keep messages until every subscribed group has consumed them (JetStream stream,
    Kafka topic, memory log); ephemeral ones (``persistent=False``) deliver only to current subscribers and
    drop (and count) what nobody listens to. ``max_age`` (seconds), ``max_bytes`` and ``max_messages`` are
    retention limits (oldest dropped first); ``partitions``/``replicas`` size Kafka topics and JetStream
    replicas; ``duplicate_window`` (seconds) is how long the broker remembers message ids to drop duplicates.
    """

    persistent: bool = True
    max_age: float | None = attrs.field(default=None, validator=_optional_positive_float)
    max_bytes: int | None = attrs.field(default=None, validator=_optional_positive_int)
    max_messages: int | None = attrs.field(default=None, validator=_optional_positive_int)
    partitions: int = attrs.field(default=1, validator=_positive_int)
    replicas: int = attrs.field(default=1, validator=_positive_int)
    duplicate_window: float = attrs.field(default=120.0, validator=_non_negative_float)


@attrs.frozen(slots=True, kw_only=True)
class PublishResult:
    """The broker's verdict on one published message (one result per message, never more, never less).

    Envelopes have results, and raw ``publish(..., message_id=...)`` calls: for those ``event_id`` is the
    message id, ``aggregate_id`` the ``key`` and ``event_type`` None. Raw publishes without a ``message_id``
    and the bus's own dead-letter publishes have none. ``success`` False carries the ``error`` (a
    :class:`PublishError` for a publish the broker never answered before the bus closed).
    """

    event_id: str
    topic: str
    aggregate_id: str | None
    event_type: str | None
    success: bool
    error: BaseException | None = attrs.field(default=None, eq=False)
    timestamp: _dt.datetime = attrs.field(factory=lambda: _dt.datetime.now(_dt.UTC))


#: ``await on_publish_results(batch)``: an async callable taking a non-empty sequence of results.
PublishResultsCallback = Callable[[Sequence[PublishResult]], Awaitable[object]]


@attrs.frozen(slots=True, kw_only=True)
class BusOptions:
    """Sizes and policies of one bus. All buffers are finite; full buffers mean backpressure.

    - ``lanes``/``lane_buffer``: keyed lanes (one task each) and the bounded queue in front of each.
    - ``workers``/``worker_buffer``: tasks and the shared bounded queue for keyless messages.
    - ``retry``: the :class:`RetryPolicy` for failing handlers (a subscription may pass its own, ``retry=``).
    - ``dead_letter``: the :class:`DeadLetterPolicy`: dead-letter topic suffix (``None`` disables
      dead-lettering: discard, logged and counted) and what happens to a key after a dead letter (a
      subscription may pass its own, ``dead_letter=``).
    - ``close_timeout``: seconds that a graceful close waits for handlers and pending publishes.
    - ``max_pending_publishes``: the in-flight publish window; ``publish`` waits while it is full.
    - ``max_pending_bytes``: the same window in bytes: ``publish`` also waits (``publish_nowait`` raises
      ``trio.WouldBlock``) while the bodies in flight plus this one would pass it; one message is always
      admitted when nothing is in flight. ``None`` (default): ``64 * max_message_bytes`` (64 MiB by default);
      when set, at least ``max_message_bytes``. Bytes are freed when the broker's verdict arrives.
    - ``publish_batch``: most messages handed to the backend in one call (one bridge crossing).
    - ``results_buffer``: capacity of the :meth:`EventBus.publish_results` channel, of the
      ``on_publish_results`` queue, and the largest batch handed to ``on_publish_results``.
    - ``on_publish_results``: ``async def on_publish_results(results: Sequence[PublishResult])``, awaited by a
      task the bus owns with every batch of results that is ready (non-empty, at most ``results_buffer``), in
      arrival order, including the results produced while the bus closes (the outbox case, without a reader
      task). While it runs results queue (up to ``results_buffer``), then publishing waits (backpressure; one
      WARNING the first time). An exception from it is logged with its traceback (logger
      ``trio_eventbus.publish``) and counted in ``Statistics.callback_errors``, never propagated; the batch
      is not retried. ``flush()`` also waits until it has been handed every result so far. An outer
      cancellation (hard stop) cancels it like a handler. Not an async callable: :class:`InvalidOptionError`.
    - ``max_message_bytes``: largest encoded body accepted by ``publish`` (NATS and Kafka default to 1 MiB).
    - ``service``: the name of the service this bus belongs to; it is the consumer group of subscriptions
      that do not name one (``subscribe(..., group=...)``). With neither, ``subscribe`` raises
      :class:`InvalidOptionError`: there is no implicit group, so two unrelated services never share one
      by accident (on every backend, the memory broker included).
    - ``max_buffered_bytes``: most bytes (``len(body)``) of fetched deliveries the lanes and the worker pool
      hold at once, queued or being handled, until each is settled; the fetchers wait beyond it (as at a full
      lane). ``None``: 64 * ``max_message_bytes`` (64 MiB by default). At least ``max_message_bytes``; one
      delivery is always admitted when nothing is held, so the bytes held pass it by one message at most.
      The count bounds (``lane_buffer``, ``worker_buffer``) hold as well.
    - ``middleware``: async ``middleware(ctx, call_next)`` wrappers around every handler call, outermost first
      (see ``trio_eventbus.HandlerContext``): once per attempt, for tracing, metrics, an inbox.
    """

    lanes: int = attrs.field(default=64, validator=_positive_int)
    lane_buffer: int = attrs.field(default=64, validator=_positive_int)
    workers: int = attrs.field(default=16, validator=_positive_int)
    worker_buffer: int = attrs.field(default=256, validator=_positive_int)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=v.instance_of(RetryPolicy))
    dead_letter: DeadLetterPolicy = attrs.field(factory=DeadLetterPolicy, validator=v.instance_of(DeadLetterPolicy))
    close_timeout: float = attrs.field(default=10.0, validator=_non_negative_float)
    max_pending_publishes: int = attrs.field(default=10_000, validator=_positive_int)
    publish_batch: int = attrs.field(default=500, validator=_positive_int)
    results_buffer: int = attrs.field(default=10_000, validator=_positive_int)
    on_publish_results: PublishResultsCallback | None = attrs.field(
        default=None, eq=False, validator=v.optional(v.async_callable)
    )
    middleware: tuple[Callable[..., object], ...] = attrs.field(default=(), validator=v.callables)
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    service: str | None = attrs.field(default=None, validator=v.optional(v.group_name))
    max_pending_bytes: int | None = attrs.field(
        default=None, validator=v.optional(v.at_least_field("max_message_bytes"))
    )

    @property
    def pending_bytes_limit(self) -> int:
        """``max_pending_bytes``, or the derived default ``64 * max_message_bytes``."""
        return 64 * self.max_message_bytes if self.max_pending_bytes is None else self.max_pending_bytes

    max_buffered_bytes: int | None = attrs.field(
        default=None, validator=v.optional(v.at_least_field("max_message_bytes"))
    )

    @property
    def buffered_bytes_limit(self) -> int:
        """``max_buffered_bytes``, or its default: ``BUFFERED_MESSAGES_DEFAULT`` * ``max_message_bytes``."""
        if self.max_buffered_bytes is not None:
            return self.max_buffered_bytes
        return BUFFERED_MESSAGES_DEFAULT * self.max_message_bytes


@attrs.frozen(slots=True, kw_only=True)
class Statistics:
    """A frozen snapshot of one bus's counters and live state (see :meth:`EventBus.statistics`).

    Counters count since the bus opened; the other figures are the state at the moment of the snapshot.
    """

    #: Messages the broker acknowledged (raw and envelopes, dead letters included).
    published: int
    #: Messages the broker refused or that never reached it (each has a failed outcome).
    publish_failed: int
    #: Messages accepted by ``publish`` whose broker outcome has not arrived yet (the in-flight window).
    pending_publishes: int
    #: Body bytes of those messages (bounded by ``BusOptions.max_pending_bytes``).
    pending_publish_bytes: int
    #: Deliveries whose handler returned (acked).
    handled: int
    #: Handler calls that raised.
    handler_errors: int
    #: Retries of failed handler calls (in place or by redelivery).
    retries: int
    #: Messages sent to their dead-letter topic after their last attempt (or as undecodable, non-retryable or
    #: parked).
    dead_lettered: int
    #: Dead-letter publishes that failed (the message is nak'ed and redelivered later).
    dead_letter_failed: int
    #: Messages that exhausted their attempts with dead-lettering disabled: acked, logged and counted here.
    discarded: int
    #: Deliveries that did not decode to an envelope (dead-lettered at once).
    undecodable: int
    #: Deliveries the broker made more than once (``attempt > 1``).
    redelivered: int
    #: Messages of parked keys sent to the dead-letter topic unhandled (``DeadLetterPolicy(after="park")``).
    parked: int
    #: Keys parked right now, over every subscription (see :meth:`EventBus.parked_keys`).
    parked_keys: int
    #: Deliveries a lane or worker task is processing right now.
    in_flight: int
    #: Deepest lane queue right now.
    lane_depth_max: int
    #: Lanes running a handler right now.
    lanes_busy: int
    #: Keyless deliveries waiting for a worker.
    worker_queue_depth: int
    #: Bytes of the deliveries the lanes and workers hold right now, queued or being handled (bounded by
    #: ``BusOptions.max_buffered_bytes`` plus one message).
    buffered_bytes: int
    #: The highest ``buffered_bytes`` since the bus opened.
    buffered_bytes_max: int
    #: Publish results not delivered: the channel was closed by its reader, or still full at the close deadline;
    #: or the ``on_publish_results`` task was cancelled (hard stop) or passed its close deadline before taking them.
    results_dropped: int
    #: Exceptions raised by ``BusOptions.on_publish_results`` (logged with traceback, never propagated).
    callback_errors: int
    #: Tasks the bus's nursery runs right now.
    tasks_alive: int
    #: Live subscriptions of this bus.
    subscriptions: int
    #: Whether the bus refuses new publishes and subscriptions (closing or closed).
    closing: bool
    #: The backend's own figures: a :class:`BackendStatistics` subclass (``MemoryStatistics``,
    #: ``NatsStatistics``, ``KafkaStatistics``).
    backend: BackendStatistics
