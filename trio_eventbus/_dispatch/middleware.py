"""Middleware: the public hook around each handler call (for tracing, metrics, an idempotent inbox, ...).

A middleware is an async callable ``middleware(ctx, call_next)``; configure a tuple of them in
``BusOptions.middleware``::

    async def timing(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        start = trio.current_time()
        try:
            await call_next()
        finally:
            observe(ctx.topic, ctx.attempt, trio.current_time() - start)

    options = teb.BusOptions(middleware=(timing, inbox))

Ordering. ``middleware[0]`` is the outermost: it runs first and sees the outcome of everything inside it; the
handler is the innermost. The chain runs in the message's lane, so messages of one key go through it one at a
time in publish order, and a middleware that awaits holds the lane as the handler would.

Outcome. ``await call_next()`` runs the rest of the chain and then the handler; it returns when they
returned and raises what they raised. The outcome of the outermost middleware is the attempt's outcome:
returning is success (the message is acked), raising an ``Exception`` is a failed attempt (retried per
``RetryPolicy``, then dead-lettered). So a middleware may observe a failure and re-raise it, swallow it to
mark the attempt handled, raise to fail an attempt, or skip the handler by returning without calling
``call_next`` (an inbox that has already seen ``ctx.message_id``: the message is then acked unhandled). Call
``call_next`` at most once per call of the middleware.

Retries. The chain runs once per attempt: an in-place retry runs it again with ``ctx.attempt`` one higher
(the backoff sleep is outside the chain), a redelivered message runs it again with the broker's attempt
count. Settlement (ack, nak for redelivery, dead letter) happens after the chain, outside it; an envelope
that does not decode is dead-lettered before the chain and never reaches it (``Statistics.undecodable``).

Cancellation. A hard stop or the close deadline cancels the handler and the middlewares around it:
``call_next()`` raises ``trio.Cancelled``. Let it propagate (clean up in ``finally``, catch ``Exception``,
never ``BaseException``); the message is then nak'ed and redelivered later. So an inbox must record a message
as processed only after ``call_next()`` returned, together with the handler's effects.

Handler context. A subscription with ``context=True`` calls its handler as ``handler(value, ctx)`` with the
same :class:`HandlerContext` the middleware sees (the handler is the innermost link of the chain).

Cost. Only a subscription with middleware or ``context=True`` builds a :class:`HandlerContext` (once per
attempt, ``delivery_info`` included) and the chain's links; otherwise the handler is awaited directly, as if
this module did not exist.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import attrs

from .._abc import Delivery
from .._exceptions import InvalidHandlerError
from .decode import Value

__all__ = ["Attempt", "CallNext", "Describe", "Handler", "HandlerContext", "Middleware", "chain", "check_async"]

#: A subscription's handler: ``await handler(message_or_envelope)`` (or ``handler(value, ctx)`` with
#: ``context=True``); its return value is ignored.
Handler = Callable[..., Awaitable[object]]
#: ``describe(delivery)``: the backend's raw delivery metadata (``Backend.delivery_info``).
Describe = Callable[[Delivery], Mapping[str, object]]
_NO_INFO: Mapping[str, object] = types.MappingProxyType({})


class CallNext(Protocol):
    """The rest of the chain, as a middleware sees it: ``await call_next()``."""

    def __call__(self) -> Awaitable[None]: ...


@attrs.frozen(slots=True, kw_only=True)
class HandlerContext:
    """What a middleware, or a handler subscribed with ``context=True``, knows about the attempt (one value
    per attempt, immutable).

    ``message`` is the value the handler gets: a :class:`~trio_eventbus.Message` (``subscribe``) or an
    :class:`~trio_eventbus.Envelope` (``subscribe_envelope``). ``attempt`` counts broker deliveries and
    in-place retries from 1. ``headers``, ``key`` and ``message_id`` are the delivery's (for an envelope:
    its wire headers, its ``aggregate_id`` and its ``event_id``). ``group`` is the consumer group.

    ``delivery_info`` is the broker's raw metadata of this delivery, read-only, backend-specific (for logs
    and debugging; do not build logic on it across backends): memory ``offset``; NATS JetStream ``stream``,
    ``consumer``, ``stream_seq``, ``consumer_seq``, ``num_delivered``, ``num_pending`` (empty for core NATS,
    ephemeral topics); Kafka ``partition``, ``offset``.
    """

    topic: str
    group: str
    message: Value
    attempt: int
    headers: Mapping[str, str]
    key: str | None
    message_id: str | None
    delivery_info: Mapping[str, object] = _NO_INFO


class Middleware(Protocol):
    """``await middleware(ctx, call_next)`` (see the module docstring): any async function of that shape."""

    def __call__(self, ctx: HandlerContext, call_next: CallNext, /) -> Awaitable[None]: ...


#: One attempt: ``await attempt(delivery, value, attempt_number)`` runs the chain (or the bare handler).
Attempt = Callable[[Delivery, Value, int], Awaitable[object]]
_Call = Callable[[HandlerContext], Awaitable[object]]


def check_async(fn: object, what: str = "handler") -> None:
    """Raise :class:`InvalidHandlerError` unless ``fn`` is an async function or async callable."""
    if inspect.iscoroutinefunction(fn):
        return
    call = getattr(fn, "__call__", None)  # noqa: B004 - we need the bound __call__ itself
    if call is not None and inspect.iscoroutinefunction(call):
        return
    raise InvalidHandlerError(f"{what} must be an async function, got {fn!r}")


def _no_info(delivery: Delivery) -> Mapping[str, object]:
    return _NO_INFO


def chain(
    middleware: Sequence[Middleware],
    handler: Handler,
    topic: str,
    group: str,
    *,
    context: bool = False,
    describe: Describe = _no_info,
) -> Attempt:
    """One attempt through ``middleware`` (outermost first) around ``handler``, composed once; ``context``:
    the handler takes ``(value, ctx)``; ``describe`` gives a delivery's ``HandlerContext.delivery_info``.

    Each link is a plain function returning its middleware's coroutine, so the chain adds no frame of its own
    per attempt: a context, one ``functools.partial`` per middleware, and the middlewares' own frames.
    """
    if not middleware and not context:

        def bare(delivery: Delivery, value: Value, attempt: int) -> Awaitable[object]:
            return handler(value)

        return bare

    call: _Call = _innermost_with_context(handler) if context else _innermost(handler)
    for mw in reversed(middleware):
        call = _link(mw, call)
    first = call

    def attempt(delivery: Delivery, value: Value, attempt: int) -> Awaitable[object]:
        ctx = HandlerContext(
            topic=topic,
            group=group,
            message=value,
            attempt=attempt,
            headers=delivery.headers,
            key=delivery.key,
            message_id=delivery.message_id,
            delivery_info=describe(delivery),
        )
        return first(ctx)

    return attempt


def _innermost(handler: Handler) -> _Call:
    def call(ctx: HandlerContext) -> Awaitable[object]:
        return handler(ctx.message)

    return call


def _innermost_with_context(handler: Handler) -> _Call:
    def call(ctx: HandlerContext) -> Awaitable[object]:
        return handler(ctx.message, ctx)

    return call


def _link(middleware: Middleware, inner: _Call) -> _Call:
    partial = functools.partial

    def call(ctx: HandlerContext) -> Awaitable[object]:
        return middleware(ctx, partial(inner, ctx))  # type: ignore[arg-type] # inner's result is ignored

    return call
