"""Partitioned consumer groups on NATS JetStream (a real nats-server): per-key order across instances.

Every test prints its figures (sent, handled, lost, duplicates, order violations, concurrent handlings of one
key). Instances are buses in this process, or child processes (``nats_group_child.py``) for SIGKILL.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import pytest
import trio
from nats_groups_helpers import Tally
from nats_helpers import config, topic_name

import trio_eventbus as teb
from trio_eventbus.testing.conformance import envelope, seq_of

pytestmark = pytest.mark.nats


def handler_for(tally: Tally, member: str, rng: random.Random):  # type: ignore[no-untyped-def]
    async def handle(env: teb.Envelope) -> None:
        key = env.aggregate_id
        tally.start(key)
        try:
            await trio.sleep(rng.random() * 0.002)  # the workload: 0-2 ms per envelope
        finally:
            tally.finish(key, seq_of(env), member)

    return handle


async def publish_all(bus: teb.EventBus, topic: str, keys: int, per_key: int) -> None:
    """``per_key`` envelopes for each of ``keys`` aggregates, interleaved, each key in order."""
    for n in range(per_key):
        for k in range(keys):
            await bus.publish_envelope(topic, envelope(f"agg-{k}", n))
    await bus.flush()


async def run_instances(url: str, instances: int, partitions: int, keys: int, per_key: int) -> Tally:
    topic, group = topic_name("pcg"), "svc"
    tally = Tally(keys, per_key)
    rng = random.Random(7)
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            buses = [await stack.enter_async_context(teb.open_bus(config(url))) for _ in range(instances)]
            for i, bus in enumerate(buses):
                await bus.configure_topic(topic, teb.TopicOptions(partitions=partitions))
                await bus.subscribe_envelope(topic, handler_for(tally, f"bus{i}", rng), group=group)
            await publish_all(buses[0], topic, keys, per_key)
            await tally.wait(tally.sent)
    return tally


@pytest.mark.parametrize(("instances", "partitions"), [(2, 1), (2, 6), (3, 6)])
async def test_instances_keep_per_key_order(nats_url: str, instances: int, partitions: int) -> None:
    """N buses in one group, 100 aggregates x 100 envelopes, handler 0-2 ms: every aggregate in publish order,
    nothing lost, never two handlings of one aggregate at once."""
    tally = await run_instances(nats_url, instances, partitions, 100, 100)
    print(f"\n{instances} instances, partitions={partitions}: {tally.figures()}")
    assert tally.lost == 0
    assert tally.violations == 0
    assert tally.concurrent == 0
