"""Kafka consumption bounded by bytes (issue 9, item 4): 700 KB messages with default settings, against a real
broker (marker ``kafka``). Without the byte bounds the group pauses its partition only at ``pause_threshold``
records (1,000 by default): it would fetch and hold every message of the test (140 MB)."""

from __future__ import annotations

import os
import resource
from collections import defaultdict

import pytest
import trio
from kafka_helpers import config, unique
from test_kafka import group_stats, log_events

import trio_eventbus as teb

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024


async def test_big_messages_are_consumed_within_byte_bounds(kafka_bootstrap: str) -> None:
    """200 messages of 700 KB (incompressible) to a handler blocked at first, default KafkaConfig sizes and
    BusOptions: the group pauses on bytes, the bus's lanes hold at most their budget, and once the handler
    runs every message is handled in per-key order."""
    topic, group = unique("bytes"), unique("g")
    total, keys = 200, 4
    payload = os.urandom(700_000)
    gate = trio.Event()
    done = trio.Event()
    seen: dict[str, list[int]] = defaultdict(list)
    options = teb.BusOptions()
    cfg = config(kafka_bootstrap)
    partition_bytes, fetch_bytes, pause_bytes = cfg.fetch_sizes(options.max_message_bytes, options.buffered_bytes_limit)
    assert (partition_bytes, fetch_bytes, pause_bytes) == (MiB, 16 * MiB, 80 * MiB)  # the derived defaults

    async def handler(message: teb.Message) -> None:
        await gate.wait()
        assert message.key is not None
        seen[message.key].append(int(message.data[:6]))
        if sum(map(len, seen.values())) == total:
            done.set()

    with trio.fail_after(180), log_events("pausing its partitions") as (paused,):
        async with teb.open_bus(cfg, options=options) as bus:
            await bus.subscribe(topic, handler, group=group)
            for i in range(total):
                await bus.publish(topic, b"%06d" % i + payload, key=f"k{i % keys}")
            await bus.flush()
            await paused.wait()
            blocked, blocked_group = bus.statistics(), group_stats(bus, group)
            gate.set()
            await done.wait()
            final, final_group = bus.statistics(), group_stats(bus, group)
    size = 6 + len(payload)
    print(
        f"\nsent={total} x {size:,} B; while blocked: bus buffered={blocked.buffered_bytes:,} B, group unsettled="
        f"{blocked_group.unsettled} records / {blocked_group.unsettled_bytes:,} B (pause_bytes {pause_bytes:,}); "
        f"handled={final.handled}; peaks: bus {final.buffered_bytes_max:,} B (budget "
        f"{options.buffered_bytes_limit:,}), group {final_group.unsettled_bytes_max:,} B; "
        f"peak RSS={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    assert blocked_group.paused_for_bytes
    # the group stops at pause_bytes; what was already fetched or in the pipe still arrives (one fetch's worth)
    assert final_group.unsettled_bytes_max <= pause_bytes + fetch_bytes
    assert final_group.unsettled_bytes_max < total * size
    assert final.buffered_bytes_max <= options.buffered_bytes_limit + size
    assert final.handled == total
    violations = [key for key, seqs in seen.items() if seqs != sorted(seqs)]
    assert violations == []
    assert sorted(n for seqs in seen.values() for n in seqs) == list(range(total))
    assert not final_group.paused_for_bytes
    assert final.buffered_bytes == 0
