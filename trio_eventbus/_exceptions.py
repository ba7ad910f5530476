"""The exception tree of trio_eventbus.

Every error the bus raises on purpose is an :class:`EventBusError`. Errors caused by bad input are also the
matching builtin (``ValueError`` / ``TypeError``) so generic code keeps working. Native client errors (nats-py,
aiokafka) are translated at the backend seam; the original is kept in ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AlreadySubscribedError",
    "BackendUnavailable",
    "BusClosedError",
    "EventBusError",
    "HandlerError",
    "InvalidEnvelopeError",
    "InvalidHandlerError",
    "InvalidOptionError",
    "InvalidTopicError",
    "MessageTooLargeError",
    "PublishError",
]


class EventBusError(Exception):
    """Base class of every error raised by trio_eventbus."""


class BusClosedError(EventBusError):
    """The bus is closing or closed: it refuses new publishes and subscriptions."""


class PublishError(EventBusError):
    """The broker did not accept a message (raised by ``confirm=True`` publishes and ``flush``)."""


class MessageTooLargeError(PublishError, ValueError):
    """The encoded message is larger than ``BusOptions.max_message_bytes`` (or the broker's own limit)."""


class BackendUnavailable(EventBusError):
    """The broker cannot be reached, refused our credentials, or went away for good."""


class InvalidEnvelopeError(EventBusError, ValueError):
    """An envelope failed validation, or bytes on the wire do not decode to a valid envelope."""


class InvalidTopicError(EventBusError, ValueError):
    """A topic name is empty, too long, or uses characters some backend cannot carry."""


class InvalidOptionError(EventBusError, ValueError):
    """An option value is out of range (for example a zero or negative size).

    ``field`` names the option (``None`` when the error concerns several, such as ``user`` with ``password``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidHandlerError(EventBusError, TypeError):
    """A handler is not an ``async def`` function (or an object with an ``async def __call__``)."""


class AlreadySubscribedError(EventBusError):
    """This bus already has a subscription for the same (topic, group)."""


class HandlerError(EventBusError):
    """A handler kept failing; carried in dead-letter headers and statistics, never raised to publishers."""
