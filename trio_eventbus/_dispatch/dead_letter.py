"""The dead-letter step: where a message goes after its last attempt, and the headers that say why.

:class:`DeadLetter` (one per subscription) takes a delivery that will not be handled: its attempts are
exhausted (reason ``handler-failed``, from the retry step) or its body does not decode (``undecodable``, from
the decode step, at once). It publishes the dead letter to ``<topic><dead_letter_suffix>`` (``.dlq`` by
default), waits for the broker's ack of that publish (``confirm=True``), and only then settles the original
with ``TERM``. If the publish fails the original is nak'ed with ``delay`` (redelivered later, then retried
afresh): a message is never acked unless handled or dead-lettered. With dead-lettering disabled (suffix
``None``) the message is logged at ERROR, acked and counted as ``discarded``, never dropped silently.

Cancellation: a cancel while the dead letter is being published propagates; the lane then naks the original
(the dead letter may or may not be stored: at-least-once, so it may be dead-lettered twice).

A dead letter keeps the original body, key and headers, plus:

- ``X-DLQ-Topic``: the topic it came from; ``X-DLQ-Group``: the consumer group that gave up;
- ``X-DLQ-Reason``: ``handler-failed`` or ``undecodable``;
- ``X-DLQ-Error``: ``ExceptionType: message`` (one line, at most 1,000 characters);
- ``X-DLQ-Attempts``: how many attempts were made.

Its message id is the original's plus ``.dlq`` (so a broker that dedupes stores one dead letter per message).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from .._abc import Delivery
from .._exceptions import InvalidTopicError
from .._options import validate_topic
from .settle import Settle

__all__ = ["DeadLetter", "PublishFn", "dead_letter_headers", "dead_letter_topic"]

logger = logging.getLogger("trio_eventbus.dispatch")

H_TOPIC = "X-DLQ-Topic"
H_GROUP = "X-DLQ-Group"
H_REASON = "X-DLQ-Reason"
H_ERROR = "X-DLQ-Error"
H_ATTEMPTS = "X-DLQ-Attempts"
_MAX_ERROR = 1000

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


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line, truncated."""
    text = f"{type(error).__name__}: {error}".replace("\r", " ").replace("\n", " ")
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def dead_letter_headers(
    headers: Mapping[str, str], *, topic: str, group: str, reason: str, error: BaseException, attempts: int
) -> dict[str, str]:
    """The original headers plus the dead-letter headers (see the module docstring)."""
    out = dict(headers)
    out[H_TOPIC] = topic
    out[H_GROUP] = group
    out[H_REASON] = reason
    out[H_ERROR] = describe_error(error)
    out[H_ATTEMPTS] = str(attempts)
    return out


class DeadLetter:
    """The dead-letter step of the subscription ``(topic, group)`` (see the module docstring).

    ``dead_letter_topic`` ``None`` disables dead-lettering; ``publish`` is a confirmed publish; ``delay`` is how
    long the broker waits before redelivering a message whose dead letter could not be published.
    """

    __slots__ = ("_delay", "_publish", "_settle", "dead_letter_topic", "group", "topic")

    def __init__(
        self,
        topic: str,
        group: str,
        dead_letter_topic: str | None,
        publish: PublishFn,
        settle: Settle,
        delay: float,
    ) -> None:
        self.topic = topic
        self.group = group
        self.dead_letter_topic = dead_letter_topic
        self._publish = publish
        self._settle = settle
        self._delay = delay

    async def __call__(self, delivery: Delivery, error: BaseException, attempts: int, reason: str) -> None:
        """Dead-letter ``delivery`` after ``attempts`` attempts, then settle it (TERM, or NAK on failure)."""
        topic = self.dead_letter_topic
        if topic is None:
            logger.error(
                "dead-lettering disabled: discarding message %s of %r after %d attempts (%s): %r",
                delivery.message_id,
                self.topic,
                attempts,
                reason,
                error,
            )
            self._settle.discarded(delivery)
            return
        headers = dead_letter_headers(
            delivery.headers, topic=self.topic, group=self.group, reason=reason, error=error, attempts=attempts
        )
        message_id = None if delivery.message_id is None else f"{delivery.message_id}.dlq"
        try:
            await self._publish(topic, delivery.body, headers, delivery.key, message_id)
        except Exception as exc:
            logger.error("dead-letter publish to %r failed, message will be redelivered: %r", topic, exc)
            self._settle.dead_letter_failed(delivery, self._delay)
            return
        self._settle.dead_lettered(delivery)
