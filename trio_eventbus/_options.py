"""Frozen option and result values: BusOptions, RetryPolicy, TopicOptions, PublishResult, Statistics.

Every value is an immutable attrs class; change one with ``attrs.evolve``. Sizes are validated at
construction and raise :class:`InvalidOptionError` (a ``ValueError``), so a bad option never reaches a
running bus.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Literal

import attrs

from . import _validate as v
from ._exceptions import InvalidOptionError
from ._statistics import BackendStatistics
from ._validate import validate_group, validate_topic

__all__ = [
    "BusOptions",
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
    """

    max_attempts: int = attrs.field(default=5, validator=_positive_int)
    initial_backoff: float = attrs.field(default=0.1, validator=_non_negative_float)
    max_backoff: float = attrs.field(default=10.0, validator=_non_negative_float)
    multiplier: float = attrs.field(default=2.0, validator=_positive_float)
    strategy: Literal["in_place", "redeliver"] = attrs.field(
        default="in_place", validator=v.one_of("in_place", "redeliver")
    )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if self.initial_backoff == 0:
            return 0.0
        exponent = min(attempt - 1, 64)
        return float(min(self.initial_backoff * self.multiplier**exponent, self.max_backoff))


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
    """The broker's verdict on one published envelope (one result per envelope, never more, never less)."""

    event_id: str
    topic: str
    aggregate_id: str | None
    event_type: str | None
    success: bool
    error: BaseException | None = attrs.field(default=None, eq=False)
    timestamp: _dt.datetime = attrs.field(factory=lambda: _dt.datetime.now(_dt.UTC))


PublishResultCallback = Callable[[PublishResult], object]


@attrs.frozen(slots=True, kw_only=True)
class BusOptions:
    """Sizes and policies of one bus. All buffers are finite; full buffers mean backpressure.

    - ``lanes``/``lane_buffer``: keyed lanes (one task each) and the bounded queue in front of each.
    - ``workers``/``worker_buffer``: tasks and the shared bounded queue for keyless messages.
    - ``retry``: the :class:`RetryPolicy` for failing handlers.
    - ``dead_letter_suffix``: dead letters of ``topic`` go to ``topic + suffix``; ``None`` disables
      dead-lettering: a message that exhausts its attempts is then acked, logged at ERROR with its error and
      counted in ``Statistics.discarded`` (never silently).
    - ``close_timeout``: seconds that a graceful close waits for handlers and pending publishes.
    - ``max_pending_publishes``: the in-flight publish window; ``publish`` waits while it is full.
    - ``publish_batch``: most messages handed to the backend in one call (one bridge crossing).
    - ``results_buffer``: capacity of the :meth:`EventBus.publish_results` channel.
    - ``on_publish_result``: a plain (non-async) callable run for every envelope result; it must not block;
      an exception in it is logged and counted, never propagated.
    - ``max_message_bytes``: largest encoded body accepted by ``publish`` (NATS and Kafka default to 1 MiB).
    - ``group``: the consumer group of subscriptions that do not name one.
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
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    dead_letter_suffix: str | None = attrs.field(default=".dlq", validator=_dead_letter_suffix)
    close_timeout: float = attrs.field(default=10.0, validator=_non_negative_float)
    max_pending_publishes: int = attrs.field(default=10_000, validator=_positive_int)
    publish_batch: int = attrs.field(default=500, validator=_positive_int)
    results_buffer: int = attrs.field(default=10_000, validator=_positive_int)
    on_publish_result: PublishResultCallback | None = attrs.field(default=None, eq=False)
    middleware: tuple[Callable[..., object], ...] = attrs.field(default=(), validator=v.callables)
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    group: str = attrs.field(default="default", validator=v.group_name)
    max_buffered_bytes: int | None = attrs.field(default=None, validator=_optional_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.max_buffered_bytes is not None and self.max_buffered_bytes < self.max_message_bytes:
            raise InvalidOptionError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least max_message_bytes "
                f"({self.max_message_bytes}): a message of that size must fit",
                field="max_buffered_bytes",
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
    #: Deliveries whose handler returned (acked).
    handled: int
    #: Handler calls that raised.
    handler_errors: int
    #: Retries of failed handler calls (in place or by redelivery).
    retries: int
    #: Messages sent to their dead-letter topic after their last attempt (or as undecodable).
    dead_lettered: int
    #: Dead-letter publishes that failed (the message is nak'ed and redelivered later).
    dead_letter_failed: int
    #: Messages that exhausted their attempts with dead-lettering disabled: acked, logged and counted here.
    discarded: int
    #: Deliveries that did not decode to an envelope (dead-lettered at once).
    undecodable: int
    #: Deliveries the broker made more than once (``attempt > 1``).
    redelivered: int
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
    #: Publish results not delivered: the channel was closed by its reader, or still full at the close deadline.
    results_dropped: int
    #: Exceptions raised by ``BusOptions.on_publish_result`` (logged, never propagated).
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
