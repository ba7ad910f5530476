"""``python -m trio_eventbus bench``: benchmark harnesses that report figures (never assertions).

Memory backend: envelopes published through the whole bus (encode, in-flight window, memory broker, fetcher,
keyed lanes, decode, handler, ack, publish results) next to a bare one-hop Trio memory channel carrying the
same envelopes to the same handler, in the same run; reports msgs/s, p50/p99 latency (publish call to handler
start) and the ratio bus / bare channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from ._bus import open_bus
from ._envelope import Envelope
from ._options import BusOptions
from ._stats_util import percentile
from .backends.memory import MemoryConfig

__all__ = ["bench_memory"]


def _envelopes(count: int, aggregates: int) -> list[Envelope]:
    return [
        Envelope(aggregate_id=f"order-{i % aggregates}", event_type="OrderPlaced", event_version=1, payload=b'{"n":1}')
        for i in range(count)
    ]


def _figures(prefix: str, count: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_msgs_per_s": count / elapsed,
        f"{prefix}_p50_ms": percentile(latencies, 50) * 1e3,
        f"{prefix}_p99_ms": percentile(latencies, 99) * 1e3,
    }


async def _run_bare(envelopes: list[Envelope], buffer: int) -> dict[str, float]:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = trio.Event()
    send, recv = trio.open_memory_channel[Envelope](buffer)
    clock = time.perf_counter

    async def handler(env: Envelope) -> None:
        latencies.append(clock() - sent[env.event_id])
        if len(latencies) == len(envelopes):
            done.set()

    async def consumer() -> None:
        async for env in recv:
            await handler(env)

    start = clock()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        for env in envelopes:
            sent[env.event_id] = clock()
            await send.send(env)
        await done.wait()
        elapsed = clock() - start
        await send.aclose()
    return _figures("bare", len(envelopes), elapsed, latencies)


async def _run_bus(envelopes: list[Envelope], options: BusOptions) -> dict[str, float]:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = trio.Event()
    clock = time.perf_counter

    async def handler(env: Envelope) -> None:
        latencies.append(clock() - sent[env.event_id])
        if len(latencies) == len(envelopes):
            done.set()

    async with open_bus(MemoryConfig(), options=options) as bus:
        results = bus.publish_results()
        succeeded = 0

        async def read_results() -> None:
            # as an outbox relay would: take every result that is ready, then wait for more
            nonlocal succeeded
            while True:
                try:
                    result = results.receive_nowait()
                except trio.WouldBlock:
                    result = await results.receive()
                succeeded += result.success

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_results)
            await bus.subscribe_envelope("bench.orders", handler)
            start = clock()
            for env in envelopes:
                sent[env.event_id] = clock()
                await bus.publish_envelope("bench.orders", env)
            await done.wait()
            elapsed = clock() - start
            await bus.flush()
            nursery.cancel_scope.cancel()
        figures = _figures("bus", len(envelopes), elapsed, latencies)
        figures["bus_results_ok"] = float(succeeded)
    return figures


async def bench_memory(*, messages: int = 50_000, aggregates: int = 1_000, lanes: int = 64) -> dict[str, float]:
    """Run both legs (bare channel first, then the bus) and return their figures and ratios."""
    options = BusOptions(lanes=lanes)
    bare = await _run_bare(_envelopes(messages, aggregates), options.lane_buffer)
    bus = await _run_bus(_envelopes(messages, aggregates), options)
    out: dict[str, float] = {"messages": float(messages), "aggregates": float(aggregates), "lanes": float(lanes)}
    out |= bare | bus
    out["ratio_throughput"] = bus["bus_msgs_per_s"] / bare["bare_msgs_per_s"]
    return out


BENCHES: dict[str, Callable[..., Any]] = {"memory": bench_memory}
