"""Dead-letter routing: where a message goes after its last attempt, and the headers that say why.

A dead letter keeps the original body, key and headers, plus:

- ``X-DLQ-Topic``: the topic it came from; ``X-DLQ-Group``: the consumer group that gave up;
- ``X-DLQ-Reason``: ``handler-failed`` or ``undecodable``;
- ``X-DLQ-Error``: ``ExceptionType: message`` (one line, at most 1,000 characters);
- ``X-DLQ-Attempts``: how many attempts were made.
"""

from __future__ import annotations

from collections.abc import Mapping

from .._exceptions import InvalidTopicError
from .._options import validate_topic

__all__ = ["dead_letter_headers", "dead_letter_topic"]

H_TOPIC = "X-DLQ-Topic"
H_GROUP = "X-DLQ-Group"
H_REASON = "X-DLQ-Reason"
H_ERROR = "X-DLQ-Error"
H_ATTEMPTS = "X-DLQ-Attempts"
_MAX_ERROR = 1000


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
