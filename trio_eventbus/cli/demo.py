"""``python -m trio_eventbus demo``: an example order service on the bus.

A producer publishes the life of many orders (``OrderCreated``, ``ItemAdded`` ..., ``OrderPaid``,
``OrderShipped``), interleaving the orders so that per-aggregate order matters; a consumer handles them
through keyed lanes and checks that every order's events arrive in version order. Prints a progress bar,
throughput, latency p50/p99 (publish call to handler), the order violations (must be 0), publish results and
the final bus statistics.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import attrs
import trio

from .._envelope import Envelope
from .._lifecycle import BackendConfig, open_bus
from .._options import BusOptions, Statistics, TopicOptions
from .._stats import percentile

__all__ = ["DemoReport", "run_demo"]


@attrs.frozen(slots=True, kw_only=True)
class DemoReport:
    """What the demo measured."""

    published: int
    handled: int
    results_ok: int
    results_failed: int
    violations: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    statistics: Statistics

    @property
    def throughput(self) -> float:
        """Handled envelopes per second."""
        return self.handled / self.elapsed if self.elapsed > 0 else 0.0


def _event_type(version: int, last: int) -> str:
    if version == 1:
        return "OrderCreated"
    if version == last:
        return "OrderShipped"
    if version == last - 1:
        return "OrderPaid"
    return "ItemAdded"


class _Progress:
    def __init__(self, total: int, out: TextIO | None) -> None:
        self.total = total
        self.out = out
        self.shown = -1

    def update(self, done: int) -> None:
        if self.out is None:
            return
        pct = done * 100 // self.total
        if pct == self.shown:
            return
        self.shown = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        self.out.write(f"\r  [{bar}] {pct:3d}%  {done}/{self.total} handled")
        if done >= self.total:
            self.out.write("\n")
        self.out.flush()


async def run_demo(
    config: BackendConfig,
    *,
    orders: int = 500,
    events_per_order: int = 8,
    lanes: int = 32,
    topic: str = "demo.orders",
    progress: TextIO | None = None,
) -> DemoReport:
    """Run the order service once and return its figures (see the module docstring)."""
    total = orders * events_per_order
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    last_version: dict[str, int] = {}
    violations = 0
    ok = failed = 0
    done = trio.Event()
    bar = _Progress(total, progress)
    clock = time.perf_counter

    async def on_order_event(env: Envelope) -> None:
        nonlocal violations
        latencies.append(clock() - sent_at.pop(env.event_id, clock()))
        if last_version.get(env.aggregate_id, 0) + 1 != env.event_version:
            violations += 1
        last_version[env.aggregate_id] = env.event_version
        await trio.lowlevel.checkpoint()  # a real handler would await its database here
        bar.update(len(latencies))
        if len(latencies) >= total:
            done.set()

    options = BusOptions(lanes=lanes)
    async with trio.open_nursery() as nursery, open_bus(config, options=options) as bus:
        results = bus.publish_results()

        async def count_results() -> None:
            nonlocal ok, failed
            async for result in results:
                if result.success:
                    ok += 1
                else:
                    failed += 1

        nursery.start_soon(count_results)
        await bus.configure_topic(topic, TopicOptions())
        await bus.subscribe_envelope(topic, on_order_event, group="order-service")
        start = clock()
        for version in range(1, events_per_order + 1):
            for order in range(orders):
                env = Envelope(
                    aggregate_id=f"order-{order}",
                    event_type=_event_type(version, events_per_order),
                    event_version=version,
                    payload=b'{"order":%d,"version":%d}' % (order, version),
                )
                sent_at[env.event_id] = clock()
                try:
                    bus.publish_envelope_nowait(topic, env)  # a hot loop: yield only when the window is full
                except trio.WouldBlock:
                    await bus.publish_envelope(topic, env)
        await bus.flush()
        await done.wait()
        elapsed = clock() - start
        stats = bus.statistics()
    return DemoReport(
        published=stats.published,
        handled=len(latencies),
        results_ok=ok,
        results_failed=failed,
        violations=violations,
        elapsed=elapsed,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        statistics=stats,
    )


def print_report(report: DemoReport, out: TextIO = sys.stdout) -> None:
    """The human-readable summary."""
    s = report.statistics
    lines = [
        f"published        {report.published} envelopes "
        f"({report.results_ok} ok results, {report.results_failed} failed)",
        f"handled          {report.handled} in {report.elapsed:.2f} s = {report.throughput:,.0f} envelopes/s",
        f"latency          p50 {report.p50_ms:.2f} ms, p99 {report.p99_ms:.2f} ms (publish call to handler)",
        f"order violations {report.violations}",
        f"statistics       handled={s.handled} handler_errors={s.handler_errors} retries={s.retries} "
        f"dead_lettered={s.dead_lettered} redelivered={s.redelivered} publish_failed={s.publish_failed} "
        f"pending={s.pending_publishes} in_flight={s.in_flight}",
    ]
    out.write("\n".join(lines) + "\n")


def demo_topic(backend: str) -> str:
    """The demo's topic: fixed on memory, unique per run on a shared broker."""
    return "demo.orders" if backend == "memory" else f"demo.orders.{os.getpid()}-{int(time.time())}"
