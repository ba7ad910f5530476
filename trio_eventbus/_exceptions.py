"""The exception tree of trio_eventbus.

Every error the bus raises on purpose is an :class:`EventBusError`. Errors caused by bad input are also the
matching builtin (``ValueError`` / ``TypeError``) so generic code keeps working. Native client errors (nats-py,
aiokafka) are translated at the backend seam; the original is kept in ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

__all__ = [
    "AlreadySubscribedError",
    "BackendUnavailable",
    "BusClosedError",
    "EventBusError",
    "HandlerError",
    "InvalidEnvelopeError",
    "InvalidHandlerError",
    "InvalidHeaderError",
    "InvalidOptionError",
    "InvalidTopicError",
    "MessageTooLargeError",
    "NonRetryableError",
    "PublishError",
    "ResultsReaderError",
    "map_exceptions",
    "translate_exception",
]


class EventBusError(Exception):
    """Base class of every error raised by trio_eventbus."""


class BusClosedError(EventBusError):
    """The bus is closing or closed: it refuses new publishes and subscriptions."""


class PublishError(EventBusError):
    """The broker did not accept a message (raised by ``confirm=True`` publishes and ``flush``)."""


class MessageTooLargeError(PublishError, ValueError):
    """The encoded message is larger than ``BusOptions.max_message_bytes`` (or the broker's own limit)."""


class ResultsReaderError(EventBusError):
    """``async for`` over ``EventBus.publish_results()`` inside the ``open_bus`` block, where it could never end.

    The results channel ends only when the bus closes, and the bus closes only after its block, with every
    nursery opened in it, has ended: a loop over the channel in the block's task, or in a task of a nursery
    opened inside the block, would wait forever. Iterate in a task of a nursery opened *outside* the
    ``async with open_bus(...)`` block, or set ``BusOptions.on_publish_results`` and let the bus call you with
    batches of results. ``receive()`` / ``receive_nowait()`` stay allowed anywhere (reading a known number of
    results is fine).
    """


class BackendUnavailable(EventBusError):
    """The broker cannot be reached, refused our credentials, or went away for good."""


class InvalidEnvelopeError(EventBusError, ValueError):
    """An envelope failed validation, or bytes on the wire do not decode to a valid envelope."""


class InvalidHeaderError(InvalidEnvelopeError):
    """A header name or value (or a key / message id, which travel in headers on NATS) breaks the one header
    rule every backend carries unchanged, or names one of the bus's own headers (see
    ``trio_eventbus._envelope.freeze_headers``). Raised at the call; nothing is sent."""


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


class NonRetryableError(HandlerError):
    """Raised by a handler to say "retrying will not help" (a validation error, say): the message is
    dead-lettered at once (``X-DLQ-Reason: non-retryable``), with no further attempt and no backoff sleep::

        try:
            order = Order.parse(envelope.payload)
        except ValueError as exc:
            raise teb.NonRetryableError("bad total") from exc

    ``RetryPolicy.non_retryable`` does the same for exception types a handler raises itself."""


#: Native exception class (or tuple of classes) -> the bus error it becomes; the first match wins (order matters:
#: put subclasses before their bases).
ExceptionMapping = Mapping[type[BaseException] | tuple[type[BaseException], ...], type[EventBusError]]


def describe(exc: BaseException) -> str:
    """``Type: text`` of a native error: its own ``description`` when it set one (nats-py's API errors), else
    its ``str`` (aiokafka's errors already name their type; it is not repeated)."""
    description = vars(exc).get("description") if hasattr(exc, "__dict__") else None
    text = str(description) if description else str(exc) or type(exc).__name__
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}"


def translate_exception(exc: BaseException, mapping: ExceptionMapping, what: str) -> BaseException:
    """``exc`` as the bus error ``mapping`` gives for it, with ``exc`` in ``__cause__`` (message ``what: ...``).

    An :class:`EventBusError` is returned as it is; an exception that matches no entry too (a bug should not
    hide behind a bus error). For outcomes that are reported rather than raised; :func:`map_exceptions` is the
    raising form.
    """
    if isinstance(exc, EventBusError):
        return exc
    for native, ours in mapping.items():
        if isinstance(exc, native):
            err = ours(f"{what}: {describe(exc)}")
            err.__cause__ = exc
            return err
    return exc


@contextlib.contextmanager
def map_exceptions(mapping: ExceptionMapping, what: str) -> Iterator[None]:
    """Translate native client errors raised in the block into the bus's errors (httpcore's pattern).

    The first entry of ``mapping`` whose class matches wins; the bus error is raised ``from`` the native one,
    whose message ``what`` prefixes. Bus errors, unmatched exceptions and exceptions that are not ``Exception``
    (``trio.Cancelled``, ``KeyboardInterrupt``) pass through untouched::

        with map_exceptions({(nats.errors.Error, OSError, TimeoutError): BackendUnavailable}, "subscribe"):
            await bridge.run(...)
    """
    try:
        yield
    except EventBusError:
        raise
    except Exception as exc:
        err = translate_exception(exc, mapping, what)
        if err is exc:
            raise
        raise err from exc
