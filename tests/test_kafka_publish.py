"""The Kafka backend's publishing path at close: queued publish batches (the loop-side inbox) against a real broker.

``send`` queues batches without waiting for the loop; a close must still give every message exactly one
outcome from the backend (stored, or failed because it never reached the producer), and every message
reported stored must be in the topic. Marker ``kafka``; every body runs under ``trio.fail_after``.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
from kafka_helpers import config, unique

import trio_eventbus as teb
from trio_eventbus.backends._bridge import open_bridge

pytestmark = pytest.mark.kafka

_BACKLOG = 20_000


async def read_ids(bootstrap: str, topic: str) -> list[str]:
    """The message ids of every record in ``topic`` (partition 0), read with a plain aiokafka consumer."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            ids: list[str] = []
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    ids += [dict(r.headers)["X-Message-ID"].decode() for r in records]
            return ids
        finally:
            await consumer.stop()

    async with open_bridge("thread") as bridge:
        return await bridge.run(read)


@pytest.mark.parametrize("close", ["graceful", "hard"])
async def test_every_queued_publish_gets_exactly_one_outcome_at_close(
    kafka_bootstrap: str, close: str, caplog: pytest.LogCaptureFixture
) -> None:
    """20,000 publishes queued as fast as the window takes them, then the bus closes (gracefully: everything
    is stored; hard stop: the rest fails): one result per message (a hard stop counts as dropped the results
    its channel cannot take), the backend reported every message it was handed, stored ⊆ topic."""
    topic = unique(f"close-{close}")
    results: list[teb.PublishResult] = []

    async def read_results(channel: teb.ResultChannel) -> None:
        async for result in channel:  # outside the bus's block: it reads on through the close
            results.append(result)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                async with teb.open_bus(config(kafka_bootstrap)) as bus:
                    nursery.start_soon(read_results, bus.publish_results())
                    await bus.configure_topic(topic, teb.TopicOptions(partitions=1))
                    for i in range(_BACKLOG):
                        try:
                            bus.publish_nowait(topic, b"m%d" % i, key=f"k{i % 10}", message_id=f"id-{i}")
                        except trio.WouldBlock:
                            await bus.publish(topic, b"m%d" % i, key=f"k{i % 10}", message_id=f"id-{i}")
                    queued_at_close = bus.statistics().pending_publishes
                    if close == "hard":
                        scope.cancel()  # the block ends in a hard stop: the exit runs under cancellation
        stats = bus.statistics()
        stored = await read_ids(kafka_bootstrap, topic)
    per_id = Counter(r.event_id for r in results)
    ok = {r.event_id for r in results if r.success}
    failed = len(results) - len(ok)
    print(
        f"{close}: published {_BACKLOG}, in flight at close {queued_at_close}, results {len(results)}, "
        f"stored {len(ok)}, failed {failed}, dropped {stats.results_dropped} (a hard stop drops what the channel "
        f"cannot take), in the topic {len(stored)}, backend owes {stats.backend.pending_outcomes}"
    )
    assert set(per_id) <= {f"id-{i}" for i in range(_BACKLOG)}
    assert set(per_id.values()) == {1}  # never two results for one message
    assert len(results) + stats.results_dropped == _BACKLOG  # and one for every message
    assert stats.backend.pending_outcomes == 0  # the backend itself reported every message
    assert ok <= set(stored)  # what was reported stored is in the topic
    assert not [r for r in caplog.records if "second outcome" in r.getMessage() or "lost track" in r.getMessage()]
    if close == "graceful":
        assert failed == stats.results_dropped == 0
        assert len(stored) == _BACKLOG
    assert queued_at_close > 0  # the close really found publishes in flight
