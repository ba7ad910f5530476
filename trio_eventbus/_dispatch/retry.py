"""The retry step: what follows a failed attempt, per the subscription's ``RetryPolicy``.

The pipeline (:mod:`.pipeline`) makes the first attempt itself; when it raises an ``Exception``,
:class:`Retry` takes over (``handler_errors += 1`` per failed attempt):

- a non-retryable error (:class:`~trio_eventbus.NonRetryableError`, or an instance of one of
  ``RetryPolicy.non_retryable``): the dead-letter step at once, reason ``non-retryable``, with no backoff
  sleep (the lane is freed as soon as the dead letter is stored);
- attempts left, ``strategy="in_place"`` (or a backend that cannot redeliver): ``retries += 1``, sleep the
  backoff in the lane or worker that holds the delivery (per-key order is kept: later messages of the key
  wait; other lanes keep running), then attempt again, with the attempt number one higher (a ``Message`` is
  rebuilt with the new ``delivery_attempt``; middleware and context handlers see it as
  ``HandlerContext.attempt``). Success: ACK.
- attempts left, ``strategy="redeliver"``: ``retries += 1``, NAK with the backoff delay and free the lane at
  once (later messages of the key may overtake it); the broker redelivers it with ``attempt + 1``.
- after ``max_attempts`` failed attempts: the dead-letter step, reason ``handler-failed``.

Each retry is logged at DEBUG with its error; the final failure is logged by the dead-letter step (ERROR,
with the traceback).

Cancellation: a cancel during the backoff sleep or a retry propagates; the lane naks the delivery.
"""

from __future__ import annotations

import logging

import attrs
import trio

from .._abc import Delivery
from .._envelope import Message
from .._exceptions import NonRetryableError
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

    __slots__ = ("_attempt", "_dead_letter", "_fatal", "_policy", "_redeliver", "_settle", "_topic")

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
        self._fatal: tuple[type[Exception], ...] = (NonRetryableError, *policy.non_retryable)
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
            if isinstance(error, self._fatal):
                await self._dead_letter(delivery, error, attempt, "non-retryable")
                return
            if attempt >= policy.max_attempts:
                await self._dead_letter(delivery, error, attempt, "handler-failed")
                return
            counters.retries += 1
            delay = policy.backoff(attempt)
            group = self._dead_letter.group
            logger.debug(
                "handler of %r (group %r) failed on message %s, key %s, attempt %d; retry in %.3fs: %r",
                self._topic,
                group,
                delivery.message_id,
                delivery.key,
                attempt,
                delay,
                error,
                extra={
                    "topic": self._topic,
                    "group": group,
                    "message_id": delivery.message_id,
                    "key": delivery.key,
                    "attempt": attempt,
                },
            )
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
