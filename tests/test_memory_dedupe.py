"""The memory broker's dedupe memory is bounded by count as well as by time (issue 15, goal 5).

``MemoryBroker(max_duplicate_ids=N)`` remembers at most the ``N`` newest message ids of a topic (within
``TopicOptions.duplicate_window``): an id older than those is forgotten and accepted again, a recent one is still
refused. Without the count bound the broker kept every id of the window (310 MB of RSS after 1M envelopes at the
default 120 s window); each test below fails without it (the remembered ids would grow with the publishes, and the
evicted id would still be refused).
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus.backends.memory.log import DEFAULT_MAX_DUPLICATE_IDS

# the three ways the broker stores a message: the plain log, a log with retention limits, an ephemeral topic
TOPIC_OPTIONS = [
    pytest.param(teb.TopicOptions(), id="plain"),
    pytest.param(teb.TopicOptions(max_messages=1_000, max_age=3_600), id="retention-limits"),
    pytest.param(teb.TopicOptions(persistent=False), id="ephemeral"),
]


@pytest.mark.parametrize("options", TOPIC_OPTIONS)
async def test_the_count_bound_forgets_the_oldest_ids_and_still_refuses_recent_ones(
    options: teb.TopicOptions, autojump_clock: trio.testing.MockClock
) -> None:
    limit = 3
    broker = teb.MemoryBroker(max_duplicate_ids=limit)
    handled: Counter[str] = Counter()

    async def handler(message: teb.Message) -> None:
        assert message.message_id is not None
        handled[message.message_id] += 1

    remembered: list[int] = []
    async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(service="svc")) as bus:
        await bus.configure_topic("t", options)
        await bus.subscribe("t", handler)
        for i in range(1, 6):  # m1..m5: the broker remembers m3, m4, m5
            await bus.publish("t", b"x", message_id=f"m{i}", confirm=True)
            remembered.append(broker.topic_statistics("t")["duplicate_ids"])
        await bus.publish("t", b"again", message_id="m1", confirm=True)  # forgotten: accepted (remembers m4 m5 m1)
        await bus.publish("t", b"again", message_id="m5", confirm=True)  # recent: refused
        await bus.publish("t", b"again", message_id="m4", confirm=True)  # recent: refused
        await bus.publish("t", b"again", message_id="m2", confirm=True)  # forgotten: accepted (m5 m1 m2)
        await bus.wait_idle()
        stats = broker.topic_statistics("t")
    print(f"published 9, remembered after each of the first 5: {remembered}, stats {stats}, handled {dict(handled)}")
    assert remembered == [1, 2, 3, 3, 3]  # never more than the bound
    assert stats["duplicate_ids"] == limit
    assert (stats["stored"], stats["duplicates"]) == (7, 2)
    assert handled == {"m1": 2, "m2": 2, "m3": 1, "m4": 1, "m5": 1}


async def test_the_default_bound_holds_under_a_stream_of_ids() -> None:
    """25,000 ids through the default broker: it remembers ``DEFAULT_MAX_DUPLICATE_IDS`` of them (the 120 s window
    alone would keep all 25,000), the oldest is accepted again, the newest refused."""
    total = 25_000
    assert total > DEFAULT_MAX_DUPLICATE_IDS
    broker = teb.MemoryBroker()
    with trio.fail_after(60):
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
            await bus.configure_topic("t", teb.TopicOptions())  # nobody consumes: the log keeps the messages
            for i in range(total):
                try:
                    bus.publish_nowait("t", b"x", message_id=f"id-{i}")
                except trio.WouldBlock:
                    await bus.publish("t", b"x", message_id=f"id-{i}")
            await bus.flush()
            remembered = broker.topic_statistics("t")["duplicate_ids"]
            await bus.publish("t", b"x", message_id="id-0", confirm=True)  # the oldest: forgotten
            await bus.publish("t", b"x", message_id=f"id-{total - 1}", confirm=True)  # the newest: remembered
            stats = broker.topic_statistics("t")
    print(f"published {total + 2}, remembered {remembered} (bound {DEFAULT_MAX_DUPLICATE_IDS}), stats {stats}")
    assert remembered == DEFAULT_MAX_DUPLICATE_IDS
    assert (stats["stored"], stats["duplicates"], stats["duplicate_ids"]) == (total + 1, 1, DEFAULT_MAX_DUPLICATE_IDS)


async def test_the_time_window_still_forgets_within_the_count_bound(autojump_clock: trio.testing.MockClock) -> None:
    """Both bounds apply: an id past ``duplicate_window`` is accepted again although the count bound has room."""
    broker = teb.MemoryBroker(max_duplicate_ids=100)
    async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
        await bus.configure_topic("t", teb.TopicOptions(duplicate_window=10))
        await bus.publish("t", b"x", message_id="a", confirm=True)
        await trio.sleep(5)
        await bus.publish("t", b"x", message_id="b", confirm=True)
        await bus.publish("t", b"x", message_id="a", confirm=True)  # 5 s old: refused
        await trio.sleep(6)
        await bus.publish("t", b"x", message_id="c", confirm=True)  # "a" expires here (11 s), "b" is 6 s old
        after = broker.topic_statistics("t")["duplicate_ids"]
        await bus.publish("t", b"x", message_id="a", confirm=True)  # accepted again
        await bus.publish("t", b"x", message_id="b", confirm=True)  # refused
        stats = broker.topic_statistics("t")
    print(f"remembered after 11 s: {after}, stats {stats}")
    assert after == 2  # b, c
    assert (stats["stored"], stats["duplicates"]) == (4, 2)


def test_the_bound_must_be_a_positive_int() -> None:
    with pytest.raises(teb.InvalidOptionError, match="max_duplicate_ids must be a positive int") as info:
        teb.MemoryBroker(max_duplicate_ids=0)
    assert info.value.field == "max_duplicate_ids"
