"""The retry step: what follows a failed attempt, per ``RetryPolicy``.

The pipeline (:mod:`.pipeline`) makes the first attempt itself; when it raises an ``Exception``,
:class:`Retry` takes over (``handler_errors += 1`` per failed attempt):

- attempts left, ``strategy="in_place"`` (or a backend that cannot redeliver): ``retries += 1``, sleep the
  backoff in the lane or worker that holds the delivery (per-key order is kept: later messages of the key
  wait; other lanes keep running), then attempt again, with the attempt number one higher (a ``Message`` is
  rebuilt with the new ``delivery_attempt``; middleware sees it as ``HandlerContext.attempt``). Success: ACK.
- attempts left, ``strategy="redeliver"``: ``retries += 1``, NAK with the backoff delay and free the lane at
  once (later messages of the key may overtake it); the broker redelivers it with ``attempt + 1``.
- after ``max_attempts`` failed attempts: the dead-letter step, reason ``handler-failed``.

Cancellation: a cancel during the backoff sleep or a retry propagates; the lane naks the delivery.
"""

from __future__ import annotations

import logging

import attrs
import trio

from .._abc import Delivery
from .._envelope import Message
from .._options import RetryPolicy
from .dead_letter import DeadLetter
from .decode import Value
from .middleware import Attempt
from .settle import Settle

__all__ = ["Retry"]

logger = logging.getLogger("trio_eventbus.dispatch")


class Retry:
    """The retry step of one subscription (see the module docstring).

    ``attempt`` runs one attempt (the middleware chain or the bare handler); ``redeliver`` selects the
    ``"redeliver"`` strategy (only when the policy asks for it and the backend redelivers).
    """

    __slots__ = ("_attempt", "_dead_letter", "_policy", "_redeliver", "_settle", "_topic")

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        redeliver: bool,
        attempt: Attempt,
        dead_letter: DeadLetter,
        settle: Settle,
        topic: str,
    ) -> None:
        self._policy = policy
        self._redeliver = redeliver
        self._attempt = attempt
        self._dead_letter = dead_letter
        self._settle = settle
        self._topic = topic

    async def __call__(self, delivery: Delivery, value: Value, error: Exception) -> None:
        """Attempt ``delivery.attempt`` of ``value`` raised ``error``: retry, redeliver or dead-letter it."""
        attempt = delivery.attempt
        policy = self._policy
        counters = self._settle.counters
        while True:
            counters.handler_errors += 1
            if attempt >= policy.max_attempts:
                logger.warning("handler for %r failed %d times, dead-lettering: %r", self._topic, attempt, error)
                await self._dead_letter(delivery, error, attempt, "handler-failed")
                return
            counters.retries += 1
            delay = policy.backoff(attempt)
            logger.debug("handler for %r failed (attempt %d), retry in %.3fs: %r", self._topic, attempt, delay, error)
            if self._redeliver:
                self._settle.redeliver(delivery, delay)
                return
            await trio.sleep(delay)
            attempt += 1
            if isinstance(value, Message):
                value = attrs.evolve(value, delivery_attempt=attempt)
            try:
                await self._attempt(delivery, value, attempt)
            except Exception as again:
                error = again
                continue
            self._settle.handled(delivery)
            return
