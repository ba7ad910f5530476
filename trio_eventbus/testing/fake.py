"""FakeBackend: a scriptable test double of the backend seam, for unit tests of the bus's own machinery.

The memory backend is the double for *applications* (it behaves like a broker). This one is for tests of the
bus itself — the publish window, the flush frontier, topic provisioning — where the test must decide *when*
the broker answers:

- :meth:`FakeBackend.send` records every message (:attr:`sent`, :attr:`held`) and returns at once; no outcome
  is reported until the test calls :meth:`release` (or :meth:`release_all`), in any order, as success or
  failure. With ``auto_ack=True`` every batch is acknowledged as it is sent.
- :meth:`ensure_topic` counts calls per topic (:attr:`ensure_calls`); a test can hold it on a gate
  (:attr:`ensure_gate`) and make the next calls fail (:meth:`fail_next_ensure`).
- :meth:`subscribe` records the sink; :meth:`deliver` hands it deliveries; :meth:`settle` records
  dispositions (:attr:`settled`).

Use it through the public API::

    backend = FakeBackend()
    async with teb.open_bus(FakeConfig(backend)) as bus:
        await bus.publish("t", b"x")
        await backend.wait_sent(1)
        await backend.release(backend.held_seqs())

One backend serves one bus (``FakeConfig.create_backend`` returns the same instance). At close, messages
still held get no outcome from the fake: the bus reports them failed (as it does for a broker that never
answered). Not thread-safe; everything runs in the test's Trio run.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from .._abc import BackendFeatures, Delivery, DeliverySink, Disposition, Outcome, OutgoingMessage
from .._options import TopicOptions

__all__ = ["FakeBackend", "FakeConfig"]


class FakeBackend:
    """See the module docstring. Every attribute is public test state; read it, do not rebind it."""

    def __init__(self, *, features: BackendFeatures | None = None, auto_ack: bool = False) -> None:
        self.features = BackendFeatures() if features is None else features
        self.auto_ack = auto_ack
        self.sent: list[OutgoingMessage] = []  #: every message handed to send, in order
        self.batches: list[int] = []  #: the size of each send call
        self.held: dict[int, OutgoingMessage] = {}  #: sent, outcome not released yet (by seq, in send order)
        self.ensure_calls: collections.Counter[str] = collections.Counter()
        self.ensured: list[tuple[str, TopicOptions]] = []  #: every ensure_topic call, in order
        self.ensure_gate: trio.Event | None = None  #: when set to an unset Event, ensure_topic waits on it
        self.ensure_entered = trio.lowlevel.ParkingLot()  #: unparked each time ensure_topic is entered
        self._ensure_errors: dict[str, collections.deque[BaseException]] = collections.defaultdict(collections.deque)
        self.sinks: dict[tuple[str, str], DeliverySink] = {}
        self.settled: list[tuple[Delivery, Disposition, float]] = []
        self.running = False
        self._outcomes: trio.MemorySendChannel[Sequence[Outcome]] | None = None
        self._sent_waiters: list[tuple[int, trio.Event]] = []

    # -- lifecycle -------------------------------------------------------------------------------------------

    def open(self, outcomes: trio.MemorySendChannel[Sequence[Outcome]]) -> AbstractAsyncContextManager[None]:
        """Run for the duration of the block; ``outcomes`` is not closed (the bus owns it)."""
        return self._open(outcomes)

    @asynccontextmanager
    async def _open(self, outcomes: trio.MemorySendChannel[Sequence[Outcome]]) -> AsyncIterator[None]:
        self._outcomes = outcomes
        self.running = True
        try:
            yield
        finally:
            self.running = False

    # -- publishing ------------------------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutgoingMessage]) -> None:
        """Record ``batch`` and return; its outcomes wait for :meth:`release` (or go at once with auto_ack)."""
        self.batches.append(len(batch))
        self.sent.extend(batch)
        for message in batch:
            self.held[message.seq] = message
        if self._sent_waiters:
            still = []
            for count, event in self._sent_waiters:
                if len(self.sent) >= count:
                    event.set()
                else:
                    still.append((count, event))
            self._sent_waiters = still
        if self.auto_ack:
            await self.release([m.seq for m in batch])
        else:
            await trio.lowlevel.checkpoint()

    def held_seqs(self) -> list[int]:
        """Sequence numbers of the messages whose outcome was not released yet, in send order."""
        return list(self.held)

    async def release(self, seqs: Iterable[int], error: BaseException | None = None) -> None:
        """Report one outcome for ``seqs`` (each must be held): stored, or failed with ``error``."""
        seqs = list(seqs)
        for seq in seqs:
            del self.held[seq]  # KeyError: not sent, or released twice (a test bug)
        assert self._outcomes is not None, "the backend was not started"
        await self._outcomes.send([Outcome(seqs, error)])

    async def release_all(self, error: BaseException | None = None) -> None:
        """Report one outcome for every held message."""
        await self.release(self.held_seqs(), error)

    async def wait_sent(self, count: int) -> None:
        """Wait until ``count`` messages in total have been handed to :meth:`send`."""
        if len(self.sent) >= count:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self._sent_waiters.append((count, event))
        await event.wait()

    # -- topics ----------------------------------------------------------------------------------------------

    def fail_next_ensure(self, topic: str, error: BaseException) -> None:
        """Make the next :meth:`ensure_topic` call for ``topic`` raise ``error`` (queued: call it again for more)."""
        self._ensure_errors[topic].append(error)

    async def ensure_topic(self, topic: str, options: TopicOptions) -> None:
        """Count the call; wait on :attr:`ensure_gate` if one is set; raise a queued error, if any."""
        self.ensure_calls[topic] += 1
        self.ensured.append((topic, options))
        self.ensure_entered.unpark_all()
        gate = self.ensure_gate
        if gate is not None:
            await gate.wait()
        else:
            await trio.lowlevel.checkpoint()
        errors = self._ensure_errors[topic]
        if errors:
            raise errors.popleft()

    # -- consuming -------------------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, options: TopicOptions, sink: DeliverySink) -> None:
        """Record the sink of ``(topic, group)``; :meth:`deliver` feeds it."""
        self.sinks[(topic, group)] = sink
        await trio.lowlevel.checkpoint()

    async def deliver(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` to the subscription's sink (waits while the bus's lanes are full)."""
        await self.sinks[(topic, group)].deliver(deliveries)

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float = 0.0) -> None:
        """Record the settlement."""
        self.settled.append((delivery, disposition, delay))

    async def stop_consuming(self) -> None:
        """Forget the sinks: they are not called again."""
        self.sinks.clear()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> dict[str, object]:
        """Live figures: messages held, sent, ensure calls."""
        return {"kind": "fake", "held": len(self.held), "sent": len(self.sent), "ensures": self.ensure_calls.total()}

    def delivery_info(self, delivery: Delivery) -> dict[str, object]:
        """No raw metadata (the fake has no log)."""
        return {}


@attrs.frozen
class FakeConfig:
    """A backend config for ``teb.open_bus`` whose backend is the given :class:`FakeBackend` (one bus)."""

    backend: FakeBackend

    def create_backend(self) -> FakeBackend:
        return self.backend
