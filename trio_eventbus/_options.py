"""Frozen option and result values: BusOptions, RetryPolicy, TopicOptions, PublishResult, Statistics.

Every value is an immutable attrs class; change one with ``attrs.evolve``. Sizes are validated at
construction and raise :class:`InvalidOptionError` (a ``ValueError``), so a bad option never reaches a
running bus.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable
from typing import Literal

import attrs

from ._exceptions import InvalidOptionError, InvalidTopicError

__all__ = [
    "BusOptions",
    "PublishResult",
    "RetryPolicy",
    "Statistics",
    "TopicOptions",
    "validate_topic",
]

_TOPIC_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
MAX_TOPIC_LENGTH = 249


def validate_topic(topic: object) -> str:
    """Return ``topic`` when every backend can carry it, else raise :class:`InvalidTopicError`.

    A topic is 1-249 characters of ``A-Z a-z 0-9 _ -`` in dot-separated, non-empty tokens: a legal Kafka
    topic name and a literal NATS subject (no wildcards ``*``/``>``, no whitespace, no empty tokens).
    """
    if not isinstance(topic, str):
        raise InvalidTopicError(f"topic must be a str, not {type(topic).__name__}")
    if not topic:
        raise InvalidTopicError("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopicError(f"topic is {len(topic)} characters long; the limit is {MAX_TOPIC_LENGTH}")
    if not _TOPIC_RE.fullmatch(topic):
        raise InvalidTopicError(
            f"invalid topic {topic!r}: use dot-separated tokens of A-Z a-z 0-9 _ - "
            "(no whitespace, no wildcards, no empty tokens)"
        )
    return topic


_GROUP_RE = re.compile(r"[A-Za-z0-9_\-]{1,200}")


def validate_group(group: object) -> str:
    """Return ``group`` when it is 1-200 characters of ``A-Z a-z 0-9 _ -`` (a valid durable/group name
    everywhere), else raise :class:`InvalidOptionError`."""
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        raise InvalidOptionError(f"group {group!r} must be 1-200 characters of A-Z a-z 0-9 _ -")
    return group


def _positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidOptionError(f"{attribute.name} must be a positive int, got {value!r}")


def _optional_positive_int(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None:
        _positive_int(_inst, attribute, value)  # type: ignore[arg-type]


def _positive_float(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"{attribute.name} must be a positive finite number, got {value!r}")


def _optional_positive_float(_inst: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None:
        _positive_float(_inst, attribute, value)  # type: ignore[arg-type]


def _non_negative_float(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidOptionError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


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
        default="in_place", validator=attrs.validators.in_(("in_place", "redeliver"))
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
    - ``middleware``: async ``middleware(ctx, call_next)`` wrappers around every handler call, outermost first
      (see ``trio_eventbus.HandlerContext``): once per attempt, for tracing, metrics, an inbox.
    """

    lanes: int = attrs.field(default=64, validator=_positive_int)
    lane_buffer: int = attrs.field(default=64, validator=_positive_int)
    workers: int = attrs.field(default=16, validator=_positive_int)
    worker_buffer: int = attrs.field(default=256, validator=_positive_int)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    dead_letter_suffix: str | None = ".dlq"
    close_timeout: float = attrs.field(default=10.0, validator=_non_negative_float)
    max_pending_publishes: int = attrs.field(default=10_000, validator=_positive_int)
    publish_batch: int = attrs.field(default=500, validator=_positive_int)
    results_buffer: int = attrs.field(default=10_000, validator=_positive_int)
    on_publish_result: PublishResultCallback | None = attrs.field(default=None, eq=False)
    middleware: tuple[Callable[..., object], ...] = attrs.field(
        default=(),
        validator=attrs.validators.deep_iterable(attrs.validators.is_callable(), attrs.validators.instance_of(tuple)),
    )
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    group: str = "default"

    def __attrs_post_init__(self) -> None:
        if self.dead_letter_suffix is not None and (
            not self.dead_letter_suffix or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.dead_letter_suffix)
        ):
            raise InvalidOptionError(f"dead_letter_suffix {self.dead_letter_suffix!r} is not usable in topics")
        validate_group(self.group)


@attrs.frozen(slots=True, kw_only=True)
class Statistics:
    """A frozen snapshot of one bus's counters and live state (see :meth:`EventBus.statistics`)."""

    published: int
    publish_failed: int
    pending_publishes: int
    handled: int
    handler_errors: int
    retries: int
    dead_lettered: int
    dead_letter_failed: int
    discarded: int
    undecodable: int
    redelivered: int
    in_flight: int
    lane_depth_max: int
    lanes_busy: int
    worker_queue_depth: int
    results_dropped: int
    callback_errors: int
    tasks_alive: int
    subscriptions: int
    closing: bool
    backend: dict[str, object] = attrs.field(factory=dict, eq=False)
