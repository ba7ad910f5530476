"""ByteBudget: the bytes of every delivery fetched and not yet finished in the bus's lanes and worker pool.

The lane and worker queues bound *how many* deliveries the bus holds (``BusOptions.lanes * lane_buffer +
worker_buffer``, plus one per task running); this budget bounds *how many bytes* (``len(body)`` of each
delivery): ``BusOptions.max_buffered_bytes``, by default 64 * ``max_message_bytes``. Both bounds hold at once.

Who does what
    The router (:mod:`.router`, the only writer) adds a delivery's size before queueing it; when the bytes
    held plus that delivery would pass the limit it waits in :meth:`ByteBudget.acquire` (backpressure: the
    fetcher, hence the broker, waits with it, as at a full lane). A delivery is always admitted when nothing
    is held, so a message as large as the limit (or larger: a broker may hand the bus anything) still flows:
    the bytes held never pass ``limit`` by more than one message. The lane or worker that finishes a delivery
    (handled, settled, or abandoned: nak'ed on cancellation or at close) calls :meth:`ByteBudget.release`;
    so does the router for a delivery it abandons itself.

Hysteresis
    A waiting router is woken once the bytes held fell to half the limit (or to zero), not at every release:
    under saturation the router then routes a run of deliveries per wake-up instead of alternating one for
    one with the lanes (the same rule as a full lane, :mod:`trio_eventbus._queue`).

No deadlock
    Only the router waits on the budget; lanes and workers only release, and every delivery they hold is
    released when it ends, however it ends (a dead-letter publish from a lane waits for the broker, never for
    the budget). A handler that waits for a *later* message to be handled can block forever under any bound
    (a full lane does the same): that is an application cycle, not the budget's.
"""

from __future__ import annotations

import trio

__all__ = ["ByteBudget"]


class ByteBudget:
    """Bytes held by the lanes and workers, bounded by ``limit`` (see the module docstring).

    ``held`` and ``peak`` (the high-water mark since the bus opened) are read for statistics; the router
    updates ``held`` inline on its fast path (no call per delivery) and calls :meth:`acquire` only to wait.
    """

    __slots__ = ("_lot", "held", "limit", "peak", "resume_at", "waiting")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be > 0, got {limit}")
        self.limit = limit
        self.resume_at = limit // 2
        self.held = 0
        self.peak = 0
        self.waiting = 0
        self._lot = trio.lowlevel.ParkingLot()

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may be admitted now (always, when nothing is held)."""
        held = self.held
        return not held or held + size <= self.limit

    async def acquire(self, size: int) -> None:
        """Wait until ``size`` bytes fit (see :meth:`fits`), then hold them. Cancelled while waiting: nothing
        is held. Not a checkpoint when they fit at once."""
        while not self.fits(size):
            self.waiting += 1
            try:
                await self._lot.park()
            finally:
                self.waiting -= 1
        held = self.held = self.held + size
        if held > self.peak:
            self.peak = held

    def release(self, size: int) -> None:
        """``size`` bytes are no longer held; wakes a waiting router once half the limit is free."""
        held = self.held = self.held - size
        if self.waiting and held <= self.resume_at:
            self._lot.unpark_all()

    def wake(self) -> None:
        """Wake the waiting router (the lanes' inline release calls it once half the limit is free)."""
        self._lot.unpark_all()

    def __repr__(self) -> str:
        return f"<ByteBudget held={self.held} limit={self.limit} peak={self.peak} waiting={self.waiting}>"
