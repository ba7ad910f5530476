"""The handler pipeline of one subscription: the steps, composed once at subscribe time.

Like Watermill's middleware, each step is handed the next one when the pipeline is composed and wraps it:
the retry step re-runs the attempt and hands an exhausted delivery to the dead-letter step, which hands it to
the settle step. The composition is built once per subscription (:func:`compose`), never per message::

    run(delivery)                          one coroutine per delivery, awaited by its lane or worker
      parked key?   (.park)                only with DeadLetterPolicy(after="park"): dead-letter unhandled
      decode        (.decode)              Message / Envelope; undecodable -> dead-letter at once
      attempt       (.middleware)          BusOptions.middleware around the handler (or the bare handler);
                                           context=True: handler(value, ctx)
      settle        (.settle)              returned: ACK (handled)
      raised: retry (.retry)               non-retryable: dead-letter at once; in place (sleep, attempt
                                           again) or redeliver (NAK + backoff)
        exhausted:  dead-letter (.dead_letter)   publish <topic>.dlq, confirmed, then TERM; failed: NAK

The success path costs one frame besides the handler's (``run`` itself: decode, the handler call and the
settlement are plain calls inside it); the steps that act on failure (retry, dead-letter) are entered only
when an attempt raised. With no middleware and no ``context=True`` the handler is awaited directly, and a
subscription that does not park keys gets a ``run`` without the parked-key check: the plain path pays for
neither feature.

Guarantees (see :mod:`trio_eventbus._dispatch` for the whole procedure): a delivery is settled exactly once,
as the last action of the step that settles it; acked only when handled, dead-lettered or discarded by
configuration; a ``BaseException`` (``trio.Cancelled``) from the handler or a step is not caught here: it
reaches the lane, which naks the delivery (and everything queued behind it) for redelivery.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .._abc import Delivery
from .._exceptions import InvalidEnvelopeError
from .._options import RetryPolicy
from .dead_letter import DeadLetter
from .decode import Undecodable, decoder
from .middleware import Describe, Handler, Middleware, chain
from .park import Park
from .retry import Retry
from .router import Router, Run
from .settle import Settle

__all__ = ["Subscription", "compose"]


def compose(
    handler: Handler,
    *,
    envelopes: bool,
    middleware: Sequence[Middleware],
    retry: RetryPolicy,
    redeliver: bool,
    dead_letter: DeadLetter,
    settle: Settle,
    context: bool = False,
    describe: Describe | None = None,
) -> Run:
    """The pipeline ``run(delivery)`` of one subscription (see the module docstring)."""
    decode = decoder(envelopes)
    undecodable = Undecodable(dead_letter, settle.counters)
    if describe is None:
        attempt = chain(middleware, handler, dead_letter.topic, dead_letter.group, context=context)
    else:
        attempt = chain(middleware, handler, dead_letter.topic, dead_letter.group, context=context, describe=describe)
    failed = Retry(
        retry, redeliver=redeliver, attempt=attempt, dead_letter=dead_letter, settle=settle, topic=dead_letter.topic
    )
    handled = settle.handled
    direct = not middleware and not context

    async def run(delivery: Delivery) -> None:
        try:
            value = decode(delivery)
        except InvalidEnvelopeError as exc:
            await undecodable(delivery, exc)
            return
        try:
            if direct:
                await handler(value)
            else:
                await attempt(delivery, value, delivery.attempt)
        except Exception as exc:
            error = exc  # handled outside the except block: retries' errors are not chained to it
        else:
            handled(delivery)
            return
        await failed(delivery, value, error)

    park = dead_letter.park
    if park is None:
        return run
    parked = park.keys
    divert = dead_letter.divert

    async def run_parking(delivery: Delivery) -> None:
        # only subscriptions with DeadLetterPolicy(after="park") pay for this check (and the extra frame)
        if parked and delivery.key in parked:
            await divert(delivery)
        else:
            await run(delivery)

    return run_parking


@attrs.define(slots=True, eq=False)
class Subscription:
    """One (topic, group) subscription of a bus: its composed pipeline, and the backend's delivery sink;
    ``park`` holds its parked keys (``DeadLetterPolicy(after="park")``, else ``None``); ``envelopes``: an
    envelope subscription (keyless deliveries are keyed by their body's aggregate id, see :mod:`.router`)."""

    topic: str
    group: str
    run: Run
    router: Router
    park: Park | None = None
    envelopes: bool = False

    async def deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Route each delivery to its lane (by key) or to the worker pool; waits while they are full."""
        await self.router.route(self.run, deliveries, self.envelopes)
