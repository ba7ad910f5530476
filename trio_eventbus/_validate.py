"""The one validator family of every option and config value (``BusOptions``, ``RetryPolicy``,
``TopicOptions``, ``MemoryConfig``, ``NatsConfig``, ``KafkaConfig``).

Each validator has the attrs signature ``(instance, attribute, value)`` and raises
:class:`~trio_eventbus.InvalidOptionError` (a ``ValueError``) whose message starts with the field name and whose
``field`` attribute is that name, so every bad option reads the same way whichever class it belongs to::

    InvalidOptionError("lanes must be a positive int, got 0")

Numbers are never ``bool`` (``True`` is not a size) and floats must be finite. Use :func:`optional` to accept
``None`` as well, and :func:`check` to run a validator outside an attrs class (plain constructor arguments).
Validation runs once, at construction: a value that exists is a valid one, and nothing is checked per message.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

from ._exceptions import InvalidOptionError, InvalidTopicError

__all__ = [
    "Validator",
    "async_callable",
    "at_least_field",
    "boolean",
    "check",
    "exception_types",
    "group_name",
    "instance_of",
    "int_at_least",
    "matches",
    "non_empty_str",
    "non_negative_float",
    "one_of",
    "optional",
    "positive_float",
    "positive_int",
    "positive_int_or",
    "validate_group",
    "validate_topic",
]

#: An attrs validator: ``(instance, attribute, value) -> None``; raises :class:`InvalidOptionError`.
Validator = Callable[[Any, Any, Any], None]


def _fail(attribute: Any, expected: str, value: object) -> InvalidOptionError:
    name: str = attribute.name
    return InvalidOptionError(f"{name} must be {expected}, got {value!r}", field=name)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(_inst: Any, attribute: Any, value: Any) -> None:
    """An ``int`` > 0."""
    if not _is_int(value) or value <= 0:
        raise _fail(attribute, "a positive int", value)


def positive_int_or(special: int, meaning: str) -> Validator:
    """An ``int`` > 0, or exactly ``special`` (which means ``meaning``, e.g. ``-1`` for "forever")."""

    def validate(_inst: Any, attribute: Any, value: Any) -> None:
        if not _is_int(value) or (value <= 0 and value != special):
            raise _fail(attribute, f"a positive int or {special} ({meaning})", value)

    return validate


def int_at_least(low: int) -> Validator:
    """An ``int`` >= ``low``."""

    def validate(_inst: Any, attribute: Any, value: Any) -> None:
        if not _is_int(value) or value < low:
            raise _fail(attribute, f"an int >= {low}", value)

    return validate


def positive_float(_inst: Any, attribute: Any, value: Any) -> None:
    """A finite number > 0 (``int`` or ``float``; seconds, multipliers)."""
    if not _is_finite(value) or value <= 0:
        raise _fail(attribute, "a positive finite number", value)


def non_negative_float(_inst: Any, attribute: Any, value: Any) -> None:
    """A finite number >= 0."""
    if not _is_finite(value) or value < 0:
        raise _fail(attribute, "a finite number >= 0", value)


def non_empty_str(_inst: Any, attribute: Any, value: Any) -> None:
    """A non-empty ``str``."""
    if not isinstance(value, str) or not value:
        raise _fail(attribute, "a non-empty str", value)


def boolean(_inst: Any, attribute: Any, value: Any) -> None:
    """``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise _fail(attribute, "a bool", value)


def one_of(*choices: object) -> Validator:
    """One of ``choices``, compared by type and value (``1`` is not ``True``, ``1.0`` is not ``1``)."""

    def validate(_inst: Any, attribute: Any, value: Any) -> None:
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            raise _fail(attribute, f"one of {choices}", value)

    return validate


def matches(pattern: str, description: str) -> Validator:
    """A ``str`` that fully matches the regular expression ``pattern`` (described to users as ``description``)."""
    regex = re.compile(pattern)

    def validate(_inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise _fail(attribute, description, value)

    return validate


def callables(_inst: Any, attribute: Any, value: Any) -> None:
    """A ``tuple`` of callables (whether each is async is checked where it is called: ``open_bus``)."""
    if not isinstance(value, tuple) or not all(callable(item) for item in value):
        raise _fail(attribute, "a tuple of callables", value)


def async_callable(_inst: Any, attribute: Any, value: Any) -> None:
    """An ``async def`` function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(value):
        return
    call = getattr(value, "__call__", None)  # noqa: B004 - the bound __call__ itself
    if call is None or not inspect.iscoroutinefunction(call):
        raise _fail(attribute, "an async function (async def)", value)


def at_least_field(other: str) -> Validator:
    """A positive int no smaller than the field ``other`` of the same instance (validators run after every
    field is set, so ``other`` may come later in the class)."""

    def validate(inst: Any, attribute: Any, value: Any) -> None:
        positive_int(inst, attribute, value)
        low = getattr(inst, other)
        if value < low:
            raise _fail(attribute, f"at least {other} ({low})", value)

    return validate


def exception_types(_inst: Any, attribute: Any, value: Any) -> None:
    """A ``tuple`` of ``Exception`` subclasses (types a handler raises and the retry step catches)."""
    if not isinstance(value, tuple) or not all(isinstance(t, type) and issubclass(t, Exception) for t in value):
        raise _fail(attribute, "a tuple of Exception subclasses", value)


def instance_of(cls: type) -> Validator:
    """An instance of ``cls`` (an option value nested in another, such as ``BusOptions.retry``)."""

    def validate(_inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, cls):
            raise _fail(attribute, f"a {cls.__name__}", value)

    return validate


def optional(validator: Validator) -> Validator:
    """``None``, or a value ``validator`` accepts."""

    def validate(inst: Any, attribute: Any, value: Any) -> None:
        if value is not None:
            validator(inst, attribute, value)

    return validate


class _Named:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def check(validator: Validator, name: str, value: Any) -> Any:
    """Run ``validator`` on ``value`` as the field ``name`` outside an attrs class; return ``value``."""
    validator(None, _Named(name), value)
    return value


# -- names -------------------------------------------------------------------------------------------------------

_TOPIC_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_GROUP_RE = re.compile(r"[A-Za-z0-9_\-]{1,200}")
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


def validate_group(group: object, field: str = "group") -> str:
    """Return ``group`` when it is 1-200 characters of ``A-Z a-z 0-9 _ -`` (a valid durable/group name
    everywhere), else raise :class:`InvalidOptionError` naming ``field``."""
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        raise InvalidOptionError(f"{field} {group!r} must be 1-200 characters of A-Z a-z 0-9 _ -", field=field)
    return group


def group_name(_inst: Any, attribute: Any, value: Any) -> None:
    """A consumer group name (see :func:`validate_group`); the error names the attribute."""
    validate_group(value, attribute.name)
