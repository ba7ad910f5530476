"""The settle step: the one place that settles deliveries, and the dispatch counters it keeps with them.

Every settlement goes through :class:`Settle`, one method per reason, each counting it in :class:`Counters`:

- :meth:`~Settle.handled`: ACK, the handler (or the middleware chain) returned (``handled``);
- :meth:`~Settle.dead_lettered`: TERM, the dead letter is stored, the broker acked its publish
  (``dead_lettered``);
- :meth:`~Settle.discarded`: ACK, attempts exhausted while dead-lettering is disabled (``discarded``);
- :meth:`~Settle.dead_letter_failed`: NAK after a delay, the dead-letter publish failed
  (``dead_letter_failed``);
- :meth:`~Settle.redeliver`: NAK after the backoff, the ``redeliver`` retry strategy (the retry step counts
  ``retries``);
- :meth:`~Settle.abandon`: NAK now, cancelled or stopping before the delivery was handled.

So a delivery is acknowledged (ACK or TERM) only when handled, dead-lettered or discarded by configuration:
never before. Settling never blocks and never awaits (the backend contract), so a step settles as its very
last action, with no checkpoint between the settlement and its return: a cancellation can never reach a
delivery that is already settled, and :meth:`~Settle.abandon` (called by the lanes for the item they held)
never settles a delivery twice.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .._abc import Delivery, Disposition

__all__ = ["Counters", "Settle", "SettleFn"]

#: ``Backend.settle``: ``(delivery, disposition, delay)``, never blocks.
SettleFn = Callable[[Delivery, Disposition, float], None]
_ACK = Disposition.ACK
_NAK = Disposition.NAK
_TERM = Disposition.TERM


@attrs.define(slots=True, eq=False)
class Counters:
    """The dispatch counters (mutable; the bus copies them into ``Statistics``). Each step counts its own:

    ``redelivered`` (router: deliveries with ``attempt > 1``), ``undecodable`` (decode), ``handler_errors``
    and ``retries`` (retry), ``parked`` and the gauge ``parked_keys`` (:mod:`.park`), and the settlements
    (:class:`Settle`).
    """

    handled: int = 0
    handler_errors: int = 0
    retries: int = 0
    dead_lettered: int = 0
    dead_letter_failed: int = 0
    discarded: int = 0
    undecodable: int = 0
    redelivered: int = 0
    parked: int = 0
    parked_keys: int = 0


class Settle:
    """Settles deliveries through ``settle`` (``Backend.settle``) and counts them (see the module docstring)."""

    __slots__ = ("_settle", "counters")

    def __init__(self, settle: SettleFn, counters: Counters) -> None:
        self._settle = settle
        self.counters = counters

    def handled(self, delivery: Delivery) -> None:
        """ACK: the handler returned."""
        self.counters.handled += 1
        self._settle(delivery, _ACK, 0.0)

    def dead_lettered(self, delivery: Delivery) -> None:
        """TERM: the dead letter of ``delivery`` is stored."""
        self.counters.dead_lettered += 1
        self._settle(delivery, _TERM, 0.0)

    def discarded(self, delivery: Delivery) -> None:
        """ACK: attempts exhausted and dead-lettering disabled (the caller has logged it at ERROR)."""
        self.counters.discarded += 1
        self._settle(delivery, _ACK, 0.0)

    def dead_letter_failed(self, delivery: Delivery, delay: float) -> None:
        """NAK after ``delay`` seconds: the dead-letter publish failed; the message comes back later."""
        self.counters.dead_letter_failed += 1
        self._settle(delivery, _NAK, delay)

    def redeliver(self, delivery: Delivery, delay: float) -> None:
        """NAK after ``delay`` seconds (the ``redeliver`` retry strategy; the retry step counts the retry)."""
        self._settle(delivery, _NAK, delay)

    def abandon(self, delivery: Delivery) -> None:
        """NAK now: not handled (cancelled, or the bus is stopping); the broker redelivers it."""
        self._settle(delivery, _NAK, 0.0)
