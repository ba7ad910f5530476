"""Memory bounded by bytes on the consuming side: the lanes' and workers' byte budget
(``BusOptions.max_buffered_bytes``) and the memory backend's byte-bounded fetch batches (``fetch_bytes``).

Issue 9, row "1,500 envelopes of 700 KB": big messages must not take the process to a gigabyte. Each test would
fail without the feature: with count bounds only, the lanes take every message the broker retains.
"""

from __future__ import annotations

import resource
from collections import defaultdict

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus.backends.memory.groups import join
from trio_eventbus.testing.leaks import watch_task_leaks

MiB = 1024 * 1024
PAYLOAD = b'"' + b"x" * 700_000 + b'"'  # a JSON string: embedded verbatim, so the body is ~700 KB
BODY_MAX = len(PAYLOAD) + 1024  # the envelope's other fields and JSON around the payload


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def test_big_envelopes_stay_within_the_byte_budget() -> None:
    """1,500 envelopes of 700 KB to a handler blocked at first: the lanes hold at most the budget (+ one
    message), the fetcher waits on it, and once the handler runs every envelope is handled in per-key order."""
    total, keys = 1_500, 10
    budget = 8 * MiB
    # the broker retains 64 unacked messages (45 MB): with count bounds only, the lanes would take all 64
    broker = teb.MemoryBroker(topic_capacity=64)
    # the publish window still counts messages only (its byte bound is another change): keep it small, so that
    # the process's memory is what the consuming side holds (+ 64 retained + 16 in flight)
    options = teb.BusOptions(max_buffered_bytes=budget, max_pending_publishes=16)
    gate = trio.Event()
    done = trio.Event()
    seen: dict[str, list[int]] = defaultdict(list)
    handled = 0

    async def handler(envelope: teb.Envelope) -> None:
        nonlocal handled
        await gate.wait()
        seen[envelope.aggregate_id].append(envelope.event_version)
        handled += 1
        if handled == total:
            done.set()

    async def publish_all(bus: teb.EventBus) -> None:
        for i in range(total):
            envelope = teb.Envelope(
                aggregate_id=f"order-{i % keys}", event_type="Big", event_version=i // keys + 1, payload=PAYLOAD
            )
            await bus.publish_envelope("big", envelope)

    with trio.fail_after(120):
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:
            await bus.subscribe_envelope("big", handler, group="g")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_all, bus)
                await trio.testing.wait_all_tasks_blocked()  # handlers on the gate, fetcher on the budget
                blocked = bus.statistics()
                gate.set()
                await done.wait()
            final = bus.statistics()
    unsettled = blocked.backend.unsettled
    print(
        f"\nblocked: buffered={blocked.buffered_bytes:,} B in {unsettled} deliveries (budget {budget:,} B, "
        f"broker retains 64); handled={final.handled} of {total}, peak buffered={final.buffered_bytes_max:,} B, "
        f"peak RSS={peak_rss_mib():,.0f} MiB"
    )
    # the fetcher stopped on bytes, not on counts: the budget is (nearly) full, and no more than it is held
    assert budget - BODY_MAX < blocked.buffered_bytes <= budget
    # handed out by the broker: what the lanes hold, plus the rest of the fetch batch waiting at the budget
    fetch_bytes = teb.MemoryConfig().fetch_bytes
    assert unsettled <= (budget + fetch_bytes) // len(PAYLOAD) + 2 < 64
    assert final.buffered_bytes_max <= budget + BODY_MAX
    assert final.handled == total
    violations = [key for key, versions in seen.items() if versions != sorted(versions)]
    assert violations == []
    assert sum(len(v) for v in seen.values()) == total
    assert final.buffered_bytes == 0


async def test_a_message_of_max_message_bytes_flows_with_the_smallest_budget() -> None:
    """``max_buffered_bytes == max_message_bytes``: one delivery at a time, but every one flows."""
    size = 100_000
    options = teb.BusOptions(max_message_bytes=size, max_buffered_bytes=size)
    got: list[bytes] = []
    done = trio.Event()

    async def handler(message: teb.Message) -> None:
        got.append(message.data)
        if len(got) == 6:
            done.set()

    with trio.fail_after(10):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
            await bus.subscribe("big", handler, group="g")
            for i in range(6):  # two keys and keyless: lanes and the worker pool share the budget
                await bus.publish("big", bytes([i]) * size, key=None if i % 3 == 2 else f"k{i % 3}")
            await done.wait()
            stats = bus.statistics()
    print(f"\nhandled={stats.handled} peak buffered={stats.buffered_bytes_max:,} B (budget {size:,} B)")
    assert sorted(b[0] for b in got) == list(range(6))
    assert all(len(b) == size for b in got)
    assert stats.buffered_bytes_max == size  # never two at once
    assert stats.buffered_bytes == 0


def test_max_buffered_bytes_must_hold_one_message() -> None:
    with pytest.raises(teb.InvalidOptionError, match="max_buffered_bytes"):
        teb.BusOptions(max_message_bytes=1000, max_buffered_bytes=999)
    with pytest.raises(teb.InvalidOptionError, match="max_buffered_bytes"):
        teb.BusOptions(max_buffered_bytes=0)
    assert teb.BusOptions().buffered_bytes_limit == 64 * MiB
    assert teb.BusOptions(max_message_bytes=1000).buffered_bytes_limit == 64_000
    assert teb.BusOptions(max_message_bytes=1000, max_buffered_bytes=1000).buffered_bytes_limit == 1000


async def fill_budget(bus: teb.EventBus, gate: trio.Event, messages: int, size: int) -> None:
    """Subscribe a handler blocked on ``gate``, publish ``messages`` of ``size`` bytes over 4 keys and
    keyless, and wait until the fetcher waits on the full budget."""

    async def handler(message: teb.Message) -> None:
        await gate.wait()

    await bus.subscribe("full", handler, group="g")
    for i in range(messages):
        await bus.publish("full", b"%06d" % i + b"." * (size - 6), key=None if i % 5 == 4 else f"k{i % 5}")
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("how", ["close_timeout", "outer_cancel"])
async def test_close_or_cancel_with_a_full_budget_releases_every_byte(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Handlers blocked, the budget full, the fetcher waiting on it: a close that times out and an outer
    cancellation both abandon (nak) what the lanes hold, release every byte and leave no task; a second bus
    then handles every message (nothing lost)."""
    messages, size = 40, 10_000
    broker = teb.MemoryBroker()
    options = teb.BusOptions(max_message_bytes=size, max_buffered_bytes=5 * size, close_timeout=1.0)
    gate = trio.Event()  # never set: the handlers hold their messages until cancelled
    held: list[teb.Statistics] = []
    with trio.move_on_after(60) as outer:
        async with watch_task_leaks(), teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:
            await fill_budget(bus, gate, messages, size)
            held.append(bus.statistics())
            if how == "outer_cancel":
                outer.cancel()
    after = bus.statistics()
    assert outer.cancelled_caught == (how == "outer_cancel")
    print(
        f"\n{how}: held {held[0].buffered_bytes:,} B in {held[0].backend.unsettled} deliveries; "
        f"after close: {after.buffered_bytes} B, unsettled {after.backend.unsettled}"
    )
    assert held[0].buffered_bytes == 5 * size  # full: the fetcher waits on the budget
    assert after.buffered_bytes == 0
    assert after.handled == 0

    handled: set[bytes] = set()
    done = trio.Event()

    async def handler(message: teb.Message) -> None:
        handled.add(message.data[:6])
        if len(handled) == messages:
            done.set()

    with trio.fail_after(60):
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus2:
            await bus2.subscribe("full", handler, group="g")
            await done.wait()
    print(f"second bus handled {len(handled)} of {messages}")
    assert len(handled) == messages


async def test_memory_fetch_batches_are_bounded_by_bytes() -> None:
    """``MemoryConfig.fetch_bytes`` caps the bodies of one fetch batch (at least one message per batch)."""
    broker = teb.MemoryBroker()
    async with teb.open_bus(teb.MemoryConfig(broker=broker)) as publisher:
        for i in range(20):
            await publisher.publish("fb", bytes(10_000 if i != 7 else 60_000), key="k")
        await publisher.flush()
    topic = broker._topic("fb")  # the broker's own hand-out, as a fetcher calls it
    group = topic.group("g")
    join(topic, group, 1)  # member 1 of the group: it owns every partition
    batches: list[int] = []
    while taken := topic.take(group, 1, 100, 25_000, trio.current_time()):
        batches.append(len(taken))
    print(f"\nbatch sizes (messages): {batches}")
    # 10 KB messages, 25 KB per batch: two at a time; the 60 KB one alone (larger than fetch_bytes, still flows)
    assert batches == [2, 2, 2, 1, 1, 2, 2, 2, 2, 2, 2]
    assert teb.MemoryConfig().fetch_bytes == 8 * MiB
    with pytest.raises(teb.InvalidOptionError, match="fetch_bytes"):
        teb.MemoryConfig(fetch_bytes=0)


async def test_dead_letters_from_lanes_holding_the_whole_budget_do_not_deadlock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every message fails and is dead-lettered while the lanes hold the whole budget and the fetcher waits on
    it; the dead-letter topic is consumed by the same bus (its fetcher waits on the same budget). The
    dead-letter publishes wait for the broker, not for the budget: every message reaches the dead-letter
    handler."""
    messages, size = 30, 10_000
    options = teb.BusOptions(
        max_message_bytes=2 * size,  # room for the dead letter's headers
        max_buffered_bytes=3 * size,
        retry=teb.RetryPolicy(max_attempts=2, initial_backoff=0.01),
    )
    dead: set[bytes] = set()
    done = trio.Event()

    async def failing(message: teb.Message) -> None:
        raise ValueError("never handled")

    async def on_dead(message: teb.Message) -> None:
        dead.add(message.data[:6])
        if len(dead) == messages:
            done.set()

    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
            await bus.subscribe("work", failing, group="g")
            await bus.subscribe("work.dlq", on_dead, group="g")
            for i in range(messages):
                await bus.publish("work", b"%06d" % i + b"." * (size - 6), key=f"k{i % 3}")
            await done.wait()
            stats = bus.statistics()
    print(
        f"\ndead-lettered={stats.dead_lettered} dead letters handled={len(dead)} of {messages}; "
        f"peak buffered={stats.buffered_bytes_max:,} B (budget {3 * size:,} B)"
    )
    assert stats.dead_lettered == messages
    assert stats.buffered_bytes_max <= 3 * size + 2 * size
