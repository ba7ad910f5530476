"""The dead-letter step: where a message goes when it will not be handled, and the headers that say why.

:class:`DeadLetter` (one per subscription) takes a delivery that will not be handled: its attempts are
exhausted (reason ``handler-failed``, from the retry step), its handler raised a non-retryable error
(``non-retryable``, at once), its body does not decode (``undecodable``, from the decode step, at once), or
its key is parked (``parked``, :meth:`DeadLetter.divert`, see :mod:`.park`). It publishes the dead letter to
``<topic><DeadLetterPolicy.suffix>`` (``.dlq`` by default), waits for the broker's ack of that publish
(``confirm=True``), and only then settles the original with ``TERM``. If the publish fails the original is
nak'ed with ``delay`` (redelivered later, then retried afresh): a message is never acked unless handled or
dead-lettered. With dead-lettering disabled (suffix ``None``) the message is acked and counted as
``discarded``, never dropped silently.

Logging (``trio_eventbus.dispatch``): the final failure is one ERROR record with the traceback
(``exc_info``), naming the message id (an envelope's event id), the key (an envelope's aggregate id), topic,
group, attempt and reason, in the message and as ``extra`` fields (``message_id``, ``key``, ``topic``,
``group``, ``attempt``, ``reason``) for structured logging. A parked message is logged at DEBUG.

Cancellation: a cancel while the dead letter is being published propagates; the lane then naks the original
(the dead letter may or may not be stored: at-least-once, so it may be dead-lettered twice).

A dead letter keeps the original body, key and headers, plus:

- ``X-DLQ-Topic``: the topic it came from; ``X-DLQ-Group``: the consumer group that gave up;
- ``X-DLQ-Reason``: ``handler-failed``, ``non-retryable``, ``undecodable`` or ``parked``;
- ``X-DLQ-Error``: ``ExceptionType: message`` (one line, at most 1,000 characters; not for ``parked``);
- ``X-DLQ-Traceback``: the error's traceback on one line, innermost frames kept, at most 2,000 characters
  (not for ``parked``): ``file:line function | ... | ExceptionType: message``, then ``<- CauseType: message``
  when it was raised ``from`` another exception;
- ``X-DLQ-Attempts``: how many attempts were made (``0`` for ``parked``: it was not handled).

Every value is one printable line without surrounding spaces (the header rule of
``_envelope.freeze_headers``), so it arrives unchanged on every backend. Its message id is the original's plus
``.dlq`` (so a broker that dedupes stores one dead letter per message).
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Awaitable, Callable, Mapping

from .._abc import Delivery
from .._exceptions import InvalidTopicError
from .._options import validate_topic
from .park import Park
from .settle import Settle

__all__ = ["DeadLetter", "PublishFn", "dead_letter_headers", "dead_letter_topic", "describe_traceback"]

logger = logging.getLogger("trio_eventbus.dispatch")

H_TOPIC = "X-DLQ-Topic"
H_GROUP = "X-DLQ-Group"
H_REASON = "X-DLQ-Reason"
H_ERROR = "X-DLQ-Error"
H_TRACEBACK = "X-DLQ-Traceback"
H_ATTEMPTS = "X-DLQ-Attempts"
_MAX_ERROR = 1000
_MAX_TRACEBACK = 2000
_PARKED = "parked"

#: ``publish(topic, body, headers, key, message_id)``: publish and wait for the broker's ack; raise on failure.
PublishFn = Callable[[str, bytes, Mapping[str, str], str | None, str | None], Awaitable[None]]


def dead_letter_topic(topic: str, suffix: str | None) -> str | None:
    """The dead-letter topic of ``topic``, ``None`` when disabled; raises if the name would be invalid."""
    if suffix is None:
        return None
    try:
        return validate_topic(topic + suffix)
    except InvalidTopicError as exc:
        raise InvalidTopicError(f"dead-letter topic of {topic!r} would be invalid: {exc}") from exc


def _one_line(text: str) -> str:
    """``text`` as a header value: control characters and odd spaces become spaces, no surrounding spaces."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    return text.strip()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line, truncated to 1,000 characters."""
    return _truncate(_one_line(f"{type(error).__name__}: {error}"), _MAX_ERROR)


def describe_traceback(error: BaseException, limit: int = _MAX_TRACEBACK) -> str:
    """The traceback of ``error`` on one header-safe line of at most ``limit`` characters (see the module
    docstring); when too long, the outermost frames are dropped first (``... |`` marks it)."""
    frames = [
        _one_line(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}")
        for f in traceback.extract_tb(error.__traceback__)
    ]
    tail = describe_error(error)
    cause = error.__cause__
    if cause is not None:
        tail = f"{tail} <- {describe_error(cause)}"
    tail = _truncate(tail, limit // 2)
    budget = limit - len(tail) - len(" | ... | ")
    kept: list[str] = []
    for frame in reversed(frames):  # innermost first
        if len(frame) + 3 > budget:
            break
        kept.append(frame)
        budget -= len(frame) + 3
    parts = kept[::-1]
    if len(kept) < len(frames):
        parts.insert(0, "...")
    parts.append(tail)
    return " | ".join(parts)


def dead_letter_headers(
    headers: Mapping[str, str],
    *,
    topic: str,
    group: str,
    reason: str,
    error: BaseException | None,
    attempts: int,
) -> dict[str, str]:
    """The original headers plus the dead-letter headers (see the module docstring)."""
    out = dict(headers)
    out[H_TOPIC] = topic
    out[H_GROUP] = group
    out[H_REASON] = reason
    if error is not None:
        out[H_ERROR] = describe_error(error)
        out[H_TRACEBACK] = describe_traceback(error)
    out[H_ATTEMPTS] = str(attempts)
    return out


class DeadLetter:
    """The dead-letter step of the subscription ``(topic, group)`` (see the module docstring).

    ``dead_letter_topic`` ``None`` disables dead-lettering; ``publish`` is a confirmed publish; ``delay`` is how
    long the broker waits before redelivering a message whose dead letter could not be published; ``park``
    (``DeadLetterPolicy(after="park")``) parks the key of every dead-lettered message; ``envelopes`` names
    the ids in logs as an envelope's (event id, aggregate).
    """

    __slots__ = (
        "_delay",
        "_labels",
        "_publish",
        "_settle",
        "dead_letter_topic",
        "group",
        "park",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        group: str,
        dead_letter_topic: str | None,
        publish: PublishFn,
        settle: Settle,
        delay: float,
        *,
        park: Park | None = None,
        envelopes: bool = False,
    ) -> None:
        self.topic = topic
        self.group = group
        self.dead_letter_topic = dead_letter_topic
        self.park = park
        self._publish = publish
        self._settle = settle
        self._delay = delay
        self._labels = ("event", "aggregate") if envelopes else ("message", "key")

    async def __call__(self, delivery: Delivery, error: BaseException, attempts: int, reason: str) -> None:
        """Dead-letter ``delivery`` after ``attempts`` attempts, then settle it (TERM, or NAK on failure)."""
        topic = self.dead_letter_topic
        self._log_failure(delivery, error, attempts, reason, topic)
        if topic is None:
            self._settle.discarded(delivery)
            return
        key = delivery.key
        if self.park is not None and key:
            self.park.park(key)  # before the publish: the key's next message must not run meanwhile
        await self._send(topic, delivery, reason, error, attempts)

    async def divert(self, delivery: Delivery) -> None:
        """Dead-letter ``delivery`` unhandled because its key is parked (reason ``parked``), then TERM it."""
        topic = self.dead_letter_topic
        assert topic is not None  # DeadLetterPolicy refuses after="park" without a dead-letter topic
        logger.debug(
            "key %r of topic %r, group %r is parked: %s %s goes to %r unhandled",
            delivery.key,
            self.topic,
            self.group,
            self._labels[0],
            delivery.message_id,
            topic,
        )
        if await self._send(topic, delivery, _PARKED, None, 0):
            self._settle.counters.parked += 1

    async def _send(
        self, topic: str, delivery: Delivery, reason: str, error: BaseException | None, attempts: int
    ) -> bool:
        """Publish the dead letter, then TERM the original (``True``); NAK it if the publish failed."""
        headers = dead_letter_headers(
            delivery.headers, topic=self.topic, group=self.group, reason=reason, error=error, attempts=attempts
        )
        message_id = None if delivery.message_id is None else f"{delivery.message_id}.dlq"
        try:
            await self._publish(topic, delivery.body, headers, delivery.key, message_id)
        except Exception as exc:
            logger.error(
                "dead-letter publish of %s %s to %r failed, the message will be redelivered: %r",
                self._labels[0],
                delivery.message_id,
                topic,
                exc,
            )
            self._settle.dead_letter_failed(delivery, self._delay)
            return False
        self._settle.dead_lettered(delivery)
        return True

    def _log_failure(
        self, delivery: Delivery, error: BaseException, attempts: int, reason: str, topic: str | None
    ) -> None:
        what, key_label = self._labels
        outcome = "discarding it (dead-lettering disabled)" if topic is None else f"dead-lettering it to {topic!r}"
        logger.error(
            "handler of %r (group %r) gave up on %s %s, %s %s, at attempt %d (%s): %s: %s",
            self.topic,
            self.group,
            what,
            delivery.message_id,
            key_label,
            delivery.key,
            attempts,
            reason,
            outcome,
            describe_error(error),
            exc_info=error,
            extra={
                "topic": self.topic,
                "group": self.group,
                "message_id": delivery.message_id,
                "key": delivery.key,
                "attempt": attempts,
                "reason": reason,
            },
        )
