"""``python -m bench --backend nats --instances 1,2,3``: a consumer group of N instances on NATS JetStream.

For each N, N buses in this process subscribe to one topic in one group (a partitioned topic: ``partitions``,
default 6, so each instance pulls its share of the slots), and one more bus publishes:

``e2e``    saturated: N messages published as fast as the bus takes them; msgs/s until the last is handled;
``paced``  2,000 msg/s for ``paced_seconds``: latency from the publish call to the handler, p50/p99.

The first row, ``i1_p1``, is today's single-instance layout (one pinned consumer, no partitions). Messages are
256-byte raw bodies keyed over 100 keys; the handler does nothing. The instances share this process (one Trio
thread, one asyncio thread each) and the machine's cores with nats-server and the publisher, so on a small
machine the figures show the cost of the group, not a scale-out (which needs a process, or a machine, per
instance). Figures are reported, never asserted.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from trio_eventbus import EventBus, open_bus
from trio_eventbus._envelope import Message
from trio_eventbus._options import BusOptions, TopicOptions
from trio_eventbus.backends.nats.config import NatsConfig
from trio_eventbus.backends.nats.stats import NatsStatistics

from .nats import _RATE, _bus_burst, _bus_paced, _clock, _delete_stream, _leg_figures, _name

__all__ = ["bench_nats_groups"]

_WARM_KEYS = 100


def _settled(buses: list[EventBus], instances: int) -> bool:
    """Every instance sees the whole group and is handing nothing over."""
    for bus in buses:
        backend = bus.statistics().backend
        assert isinstance(backend, NatsStatistics)
        own = backend.subscription_details[0].ownership
        if own is None or own.releasing or (instances > 1 and own.members != instances):
            return False
    return True


async def _group_leg(url: str, leg: str, count: int, instances: int, partitions: int) -> dict[str, float]:
    config = NatsConfig(servers=url)
    topic = _name(leg, f"group{instances}")
    latencies: list[float] = []
    warm = set[str]()
    warmed, done = trio.Event(), trio.Event()

    async def handler(msg: Message) -> None:
        if not warmed.is_set():
            warm.add(msg.key or "")
            if len(warm) == _WARM_KEYS:
                warmed.set()
            return
        latencies.append(_clock() - float(msg.data.split(b":", 2)[1]))
        if len(latencies) == count:
            done.set()

    async with AsyncExitStack() as stack:
        pub = await stack.enter_async_context(open_bus(config, options=BusOptions(lanes=64)))
        await pub.configure_topic(topic, TopicOptions(partitions=partitions))
        buses = []
        for _ in range(instances):
            bus = await stack.enter_async_context(open_bus(config, options=BusOptions(lanes=64)))
            await bus.configure_topic(topic, TopicOptions(partitions=partitions))
            await bus.subscribe(topic, handler, group="bench")
            buses.append(bus)
        while not _settled(buses, instances):  # noqa: ASYNC110 - statistics have no event to wait on
            await trio.sleep(0.05)  # waiting for the group to form (bench set-up, outside the timing)
        for k in range(_WARM_KEYS):  # every partition has a pinned member before the clock starts
            await pub.publish(topic, b"warm-up", key=f"k{k}")
        await warmed.wait()
        start = _clock()
        if leg == "e2e":
            await _bus_burst(pub, topic, count)
        else:
            await _bus_paced(pub, topic, count)
        await done.wait()
        elapsed = _clock() - start
    await _delete_stream(url, "TEB_" + topic.replace(".", "_"))
    return _leg_figures(leg, count, elapsed, latencies)


async def bench_nats_groups(
    url: str,
    *,
    instances: list[int],
    messages: int = 50_000,
    partitions: int = 6,
    paced_seconds: float = 3.0,
) -> dict[str, float]:
    """e2e and paced figures per group size (``i<N>_p<P>_...``), today's layout (``i1_p1``) first."""
    paced = max(1, int(_RATE * paced_seconds))
    out: dict[str, Any] = {"messages": float(messages), "paced_rate": _RATE, "paced_messages": float(paced)}
    rows = [(1, 1)] + [(n, partitions) for n in instances]
    started = time.monotonic()
    for n, p in rows:
        for leg, count in (("e2e", messages), ("paced", paced)):
            figures = await _group_leg(url, leg, count, n, p)
            out |= {f"i{n}_p{p}_{k}": v for k, v in figures.items()}
    out["seconds"] = time.monotonic() - started
    return {k: float(v) for k, v in out.items()}
