"""``python -m bench.memory_rss --envelopes 10000,100000,1000000``: the memory broker's footprint as it runs.

One bus on the memory backend with the defaults (``MemoryConfig()``, ``BusOptions()``, ``TopicOptions()``: a
120 s duplicate window, ``MemoryBroker()``: ``topic_capacity`` and ``max_duplicate_ids`` at their defaults), one
envelope subscription, and a publisher that builds every envelope on the fly (nothing of the load is kept by the
harness). After each size (cumulative: the sizes are points of one run) it waits until the bus is idle and prints
the process's RSS (and its peak), the Trio tasks alive, the message ids the broker remembers for dedupe, the
messages it retains, and the most it retained at once (``peak_backlog``, sampled every 10 ms).

Flat RSS and tasks from the first size to the last is the figure: the broker's dedupe memory is bounded by count as
well as by time, acked messages are trimmed, and the bus starts no task per message.

The publisher runs free by default (``publish_envelope_nowait``, awaiting only when the window is full). Where
it outruns its subscriber, the topic fills up to ``topic_capacity`` (100,000 messages, ~1.2 KB each here) before
it waits, and the RSS of each size then includes the largest backlog reached so far (``peak_backlog``; on
b068551 it reached 100,000 during the 1M run, 310 MB); ``--chunk N`` waits until idle after every N envelopes,
so that every size runs with the same backlog whatever the relative speeds.
``--max-duplicate-ids N`` overrides the count bound (a large N shows the time bound alone). Figures, never
assertions (the bound itself is tested in ``tests/test_memory_dedupe.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import trio

from trio_eventbus import BusOptions, Envelope, MemoryBroker, MemoryConfig, open_bus

__all__ = ["main", "rss_figures"]

_TOPIC = "bench.rss"


def _rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB, from /proc (0.0 where it is not available)."""
    values = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                fields = line.split()
                if fields and fields[0] in values:
                    values[fields[0]] = int(fields[1]) / 1024  # kB
    except OSError:
        pass
    return values["VmRSS:"], values["VmHWM:"]


def _tasks() -> int:
    """Trio tasks alive in this run."""
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [] if root is None else [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def rss_figures(
    sizes: Sequence[int],
    *,
    chunk: int = 0,
    aggregates: int = 1_000,
    max_duplicate_ids: int | None = None,
) -> list[dict[str, float]]:
    """Publish up to each of ``sizes`` (ascending, cumulative) through one bus, waiting until idle after every
    ``chunk`` envelopes (0: never); one dict of figures per size."""
    broker = MemoryBroker() if max_duplicate_ids is None else MemoryBroker(max_duplicate_ids=max_duplicate_ids)
    handled = 0
    peak_backlog = 0
    sampling = trio.CancelScope()

    async def sample_backlog() -> None:
        nonlocal peak_backlog
        with sampling:
            while True:
                peak_backlog = max(peak_backlog, broker.topic_statistics(_TOPIC)["retained"])
                await trio.sleep(0.01)

    async def handler(env: Envelope) -> None:
        nonlocal handled
        handled += 1

    out: list[dict[str, float]] = []
    async with trio.open_nursery() as nursery, open_bus(MemoryConfig(broker=broker), options=BusOptions()) as bus:
        await bus.subscribe_envelope(_TOPIC, handler, group="svc")
        nursery.start_soon(sample_backlog)
        start = time.perf_counter()
        published = 0
        for size in sizes:
            while published < size:
                env = Envelope(
                    aggregate_id=f"order-{published % aggregates}",
                    event_type="OrderPlaced",
                    event_version=1,
                    payload=b'{"n":1}',
                )
                try:
                    bus.publish_envelope_nowait(_TOPIC, env)
                except trio.WouldBlock:
                    await bus.publish_envelope(_TOPIC, env)
                published += 1
                if chunk and published % chunk == 0:
                    await bus.wait_idle()
            await bus.wait_idle()
            rss, peak = _rss_mb()
            stats = broker.topic_statistics(_TOPIC)
            figures = {
                "envelopes": float(published),
                "handled": float(handled),
                "seconds": time.perf_counter() - start,
                "rss_mb": rss,
                "peak_rss_mb": peak,
                "tasks": float(_tasks()),
                "duplicate_ids": float(stats.get("duplicate_ids", -1)),
                "retained": float(stats["retained"]),
                "peak_backlog": float(peak_backlog),
            }
            out.append(figures)
            print(
                "  ".join(
                    f"{k} {v:,.1f}" if k == "seconds" or k.endswith("_mb") else f"{k} {v:,.0f}"
                    for k, v in figures.items()
                ),
                flush=True,
            )
        sampling.cancel()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.memory_rss``."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory_rss", description=__doc__)
    parser.add_argument("--envelopes", default="10000,100000,1000000", help="ascending, comma-separated sizes")
    parser.add_argument("--chunk", type=int, default=0, help="wait until idle after every N envelopes (0: never)")
    parser.add_argument("--aggregates", type=int, default=1_000)
    parser.add_argument("--max-duplicate-ids", type=int, default=None, help="MemoryBroker(max_duplicate_ids=N)")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.envelopes.split(","))
    trio.run(
        lambda: rss_figures(
            sizes,
            chunk=args.chunk,
            aggregates=args.aggregates,
            max_duplicate_ids=args.max_duplicate_ids,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
