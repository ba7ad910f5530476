"""The broker-restart scenario of the conformance suite: publish, restart the broker under an open bus, go on.

One bus publishes envelopes of 10 keys and handles them in the same process, in three phases: before the
restart (until the handler is busy; from then on handlers hold their deliveries, unacked, until the broker is
back, so acks cross the restart), *during* ``case.restart()`` (a publisher keeps going, paced, while the
broker stops and starts; some of these may fail, which is allowed: a failed result is not an
acknowledgement), and after it. Then it flushes and waits, bounded, until every acknowledged envelope has
been handled.

Figures (:class:`RestartReport`): ``sent`` (publishes accepted), ``acked`` / ``failed`` (their results),
``sent_after`` / ``acked_after`` (publishes made after the restart returned, and how many of them were
acknowledged), ``lost`` (acknowledged, never
handled), ``duplicates`` (handled more than once: at-least-once allows them), ``order_violations`` (per key,
a first delivery of an envelope after the first delivery of a later one of the same key; redeliveries of
already-handled envelopes are duplicates, not violations).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

import trio_eventbus as teb

from ._case import BackendCase, envelope, open_watched_bus, running, seq_of, unique_topic

__all__ = ["RestartReport", "restart_scenario"]

_KEYS = 10
_BEFORE = 300
_AFTER = 300
_DURING_MAX = 3000
_DURING_PACE = 0.005  # seconds between publishes while the broker restarts: pacing only, not synchronisation


@attrs.frozen
class RestartReport:
    """The figures of one run of :func:`restart_scenario` (see the module docstring)."""

    backend: str
    sent: int
    acked: int
    failed: int
    sent_after: int
    acked_after: int
    handled: int
    lost: int
    duplicates: int
    order_violations: int
    restart_seconds: float

    def __str__(self) -> str:
        return (
            f"restart {self.backend}: sent={self.sent} acked={self.acked} failed={self.failed} "
            f"acked_after_restart={self.acked_after}/{self.sent_after} handled={self.handled} lost={self.lost} "
            f"duplicates={self.duplicates} order_violations={self.order_violations} "
            f"restart={self.restart_seconds:.1f}s"
        )


class _Tracker:
    """Handled envelopes, first deliveries per key, and the wait for every acknowledged one."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.first: set[int] = set()
        self.last_first: dict[str, int] = {}
        self.order_violations = 0
        self.missing: set[int] | None = None  # acknowledged, not handled yet (known after the flush)
        self.all_handled = trio.Event()
        self.busy = trio.Event()
        self.resume = trio.Event()

    async def handler(self, env: teb.Envelope) -> None:
        n = seq_of(env)
        self.deliveries += 1
        if n not in self.first:
            self.first.add(n)
            if self.last_first.get(env.aggregate_id, -1) > n:
                self.order_violations += 1
            self.last_first[env.aggregate_id] = max(n, self.last_first.get(env.aggregate_id, -1))
            if self.missing is not None:
                self.missing.discard(n)
                if not self.missing:
                    self.all_handled.set()
        if len(self.first) >= _BEFORE // 3:
            self.busy.set()
            await self.resume.wait()  # hold deliveries, unacked, across the restart
        await trio.lowlevel.checkpoint()

    def expect(self, acked: set[int]) -> None:
        self.missing = acked - self.first
        if not self.missing:
            self.all_handled.set()


async def restart_scenario(case: BackendCase) -> RestartReport:
    """Run the scenario on ``case`` (which must have a ``restart`` hook); return its figures."""
    assert case.restart is not None
    restart = case.restart
    topic = unique_topic(case, "restart")
    tracker = _Tracker()
    results: dict[int, bool] = {}
    seq_by_id: dict[str, int] = {}
    after: set[int] = set()
    sent = 0

    async def on_results(batch: Sequence[teb.PublishResult]) -> None:
        for result in batch:
            results[seq_by_id[result.event_id]] = result.success

    async def publish(bus: teb.EventBus) -> int:
        nonlocal sent
        n = sent
        env = envelope(f"key-{n % _KEYS}", n)
        seq_by_id[env.event_id] = n
        await bus.publish_envelope(topic, env)
        sent += 1
        return n

    options = teb.BusOptions(lanes=8, on_publish_results=on_results)
    async with running(case), open_watched_bus(case, options) as bus:
        await bus.subscribe_envelope(topic, tracker.handler, group="svc")
        for _ in range(_BEFORE):
            await publish(bus)
        await tracker.busy.wait()  # the consumer is mid-stream when the broker goes away

        restarted = trio.Event()
        started_at = trio.current_time()
        restart_seconds = 0.0

        async def restart_broker() -> None:
            nonlocal restart_seconds
            await restart()
            restart_seconds = trio.current_time() - started_at
            restarted.set()
            tracker.resume.set()  # handlers finish now: their acks go to the restarted broker

        async with trio.open_nursery() as nursery:
            nursery.start_soon(restart_broker)
            for _ in range(_DURING_MAX):
                if restarted.is_set():
                    break
                await publish(bus)
                await trio.sleep(_DURING_PACE)
        for _ in range(_AFTER):
            after.add(await publish(bus))
        await bus.flush()
        acked = {n for n, ok in results.items() if ok}
        tracker.expect(acked)
        with trio.move_on_after(case.timeout / 3):  # bounded: a loss is reported, not a hang
            await tracker.all_handled.wait()
    return RestartReport(
        backend=case.name,
        sent=sent,
        acked=len(acked),
        failed=len(results) - len(acked),
        sent_after=len(after),
        acked_after=len(acked & after),
        handled=len(tracker.first),
        lost=len(acked - tracker.first),
        duplicates=tracker.deliveries - len(tracker.first),
        order_violations=tracker.order_violations,
        restart_seconds=restart_seconds,
    )
