"""Partitioned consumer groups on NATS JetStream (a real nats-server): per-key order across instances.

Every test prints its figures (sent, handled, lost, duplicates, order violations, concurrent handlings of one
key). Instances are buses in this process, or child processes (``nats_group_child.py``) for SIGKILL.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from nats_group_child import GROUP_TIMINGS
from nats_groups_helpers import Tally
from nats_helpers import config, on_server, stream_of, topic_name

import trio_eventbus as teb
from trio_eventbus._partition import partition_of
from trio_eventbus.backends.nats.config import NatsConfig
from trio_eventbus.backends.nats.stats import NatsGroupStatistics, NatsStatistics
from trio_eventbus.testing.conformance import envelope, seq_of

pytestmark = pytest.mark.nats
ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "nats_group_child.py"


def handler_for(tally: Tally, member: str, rng: random.Random) -> Callable[[teb.Envelope], Awaitable[None]]:
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


# ------------------------------------------------------------------------------------- rebalancing, failover


async def publish_paced(
    bus: teb.EventBus, topic: str, keys: int, per_key: int, pause: float, burst: trio.Event | None = None
) -> None:
    """Like :func:`publish_all`, one round (an envelope per key) every ``pause`` s: a stream that lasts. Once
    ``burst`` is set, the remaining rounds go out at once (a backlog)."""
    for n in range(per_key):
        for k in range(keys):
            await bus.publish_envelope(topic, envelope(f"agg-{k}", n))
        if burst is None or not burst.is_set():
            await trio.sleep(pause)  # pacing the workload, not synchronisation
    await bus.flush()


async def member(
    cfg: NatsConfig,
    topic: str,
    group: str,
    handler: Callable[[teb.Envelope], Awaitable[None]],
    leave: trio.Event,
    partitions: int = 6,
    *,
    task_status: trio.TaskStatus[teb.EventBus] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One instance of the group: a bus subscribed until ``leave`` is set, then closed gracefully."""
    async with teb.open_bus(cfg) as bus:
        await bus.configure_topic(topic, teb.TopicOptions(partitions=partitions))
        await bus.subscribe_envelope(topic, handler, group=group)
        task_status.started(bus)
        await leave.wait()


def ownership(bus: teb.EventBus) -> NatsGroupStatistics:
    backend = bus.statistics().backend
    assert isinstance(backend, NatsStatistics)
    found = backend.subscription_details[0].ownership
    assert found is not None
    return found


async def test_members_join_and_leave_mid_stream(nats_url: str) -> None:
    """A second instance joins mid-stream (the first hands partitions over), then the first leaves gracefully
    (its partitions go to the second once it acked what it held): every key in order, nothing lost, no key
    handled by two instances at once, no duplicates."""
    topic, group = topic_name("rebalance"), "svc"
    tally = Tally(100, 100)
    rng = random.Random(11)
    cfg = config(nats_url, **GROUP_TIMINGS)
    leave_a, leave_b = trio.Event(), trio.Event()
    with trio.fail_after(90):
        async with teb.open_bus(cfg) as pub, trio.open_nursery() as nursery:
            await pub.configure_topic(topic, teb.TopicOptions(partitions=6))
            a = await nursery.start(member, cfg, topic, group, handler_for(tally, "a", rng), leave_a)
            nursery.start_soon(publish_paced, pub, topic, 100, 100, 0.03)
            await tally.wait(1500)
            b = await nursery.start(member, cfg, topic, group, handler_for(tally, "b", rng), leave_b)
            await tally.wait_member("b", 1500)
            a_figures = ownership(a)
            leave_a.set()  # graceful leave while messages are in flight
            await tally.wait(tally.sent)
            b_figures = ownership(b)
            leave_b.set()
    print(f"\njoin + leave mid-stream: {tally.figures()}\n  a before leaving: {a_figures}\n  b at the end: {b_figures}")
    if tally.first_violation is not None:
        print(tally.story())
    assert tally.lost == 0
    assert tally.violations == 0
    assert tally.concurrent == 0
    assert tally.duplicates == 0
    assert a_figures.handovers >= 3  # a gave b its share (3 or 4 of the 7 slots) when b joined
    assert b_figures.owned == ("base", "p0", "p1", "p2", "p3", "p4", "p5")  # and b took a's share when a left
    assert b_figures.resets == 0  # handovers leave nothing unacked


async def test_member_killed_mid_stream_is_replaced_in_order(nats_url: str) -> None:
    """An instance in a child process joins mid-stream (it is handed partitions), then is SIGKILLed with
    messages in its hands: the other instance takes its partitions over within the group timings, resets
    their consumers to the ack floor and handles the rest in order: nothing lost, duplicates bounded by the
    deliveries past the ack floor at the kill."""
    topic, group = topic_name("kill"), "svc"
    tally = Tally(100, 100)
    rng = random.Random(13)
    cfg = config(nats_url, **GROUP_TIMINGS)
    leave = trio.Event()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(90):
        async with teb.open_bus(cfg) as pub, trio.open_nursery() as nursery:
            await pub.configure_topic(topic, teb.TopicOptions(partitions=6))
            survivor = await nursery.start(member, cfg, topic, group, handler_for(tally, "parent", rng), leave)
            burst = trio.Event()
            nursery.start_soon(publish_paced, pub, topic, 100, 100, 0.05, burst)
            await tally.wait(1000)
            child = await trio.lowlevel.open_process(
                [sys.executable, str(CHILD), nats_url, topic, group, "6", "1000"], stdout=subprocess.PIPE, env=env
            )
            try:
                assert child.stdout is not None
                nursery.start_soon(read_child, child.stdout, tally)
                await tally.wait_member("child", 1000)
                burst.set()  # the rest at once, while the child got slow (20 ms per envelope): it holds a
                await tally.wait_member("child", 1100)  # backlog in its lanes when it is killed
                child.kill()  # SIGKILL: nothing acked, flushed or unpinned
                killed = trio.current_time()
                await child.wait()
            finally:
                child.kill()
            past_floor = await on_server(nats_url, functools.partial(deliveries_past_floor, stream_of(topic)))
            killed_at = tally.handled
            await tally.wait(tally.sent)
            finished_after = trio.current_time() - killed
            figures = ownership(survivor)
            leave.set()
    print(
        f"\nSIGKILL mid-stream: {tally.figures()}\n  handled when killed: {killed_at}, deliveries past the ack "
        f"floor at the kill: {past_floor}; everything handled {finished_after:.2f} s after the kill (session "
        f"timeout 1 s, pinned_ttl 2 s)\n  survivor: {figures}"
    )
    if tally.first_violation is not None:
        print(tally.story())
    assert tally.lost == 0
    assert tally.violations == 0
    assert tally.concurrent == 0
    assert tally.duplicates <= past_floor
    assert figures.resets >= 1  # the dead member's unacked deliveries were redelivered first
    assert figures.owned == ("base", "p0", "p1", "p2", "p3", "p4", "p5")


async def read_child(stream: trio.abc.ReceiveStream, tally: Tally) -> None:
    """Record the child's handled envelopes (``H <key> <seq>`` lines) until its stdout ends."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            parts = line.decode().split()
            if parts and parts[0] == "H":
                tally.record(parts[1], int(parts[2]), "child")


async def deliveries_past_floor(stream: str, js: Any) -> int:
    """Deliveries past the ack floor, summed over the stream's consumers (what resets can deliver again)."""
    total = 0
    for info in await js.consumers_info(stream):
        total += info.delivered.consumer_seq - info.ack_floor.consumer_seq
    return total


# ------------------------------------------------------------------------------------------ layout, options


async def test_partition_layout_and_plain_publishers(nats_url: str) -> None:
    """Keyed messages are stored on ``<partition_of(key, P)>.<topic>``, keyless ones on the topic itself; a
    plain NATS publisher's messages (base subject, no headers) are consumed by the group too; each member's
    statistics show the slots it owns, and together they own every slot once."""
    topic, group = topic_name("layout"), "svc"
    keys = [f"k{i}" for i in range(12)]
    got: list[tuple[str | None, bytes]] = []
    done = trio.Event()
    expected = len(keys) + 2 + 3

    async def handle(msg: teb.Message) -> None:
        got.append((msg.key, msg.data))
        if len(got) == expected:
            done.set()

    async def plain(js: Any) -> None:
        for i in range(3):
            await js.publish(topic, b"plain-%d" % i)

    with trio.fail_after(60):
        async with teb.open_bus(config(nats_url)) as a, teb.open_bus(config(nats_url)) as b:
            for bus in (a, b):
                await bus.configure_topic(topic, teb.TopicOptions(partitions=4))
                await bus.subscribe(topic, handle, group=group)
            for key in keys:
                await a.publish(topic, key.encode(), key=key, confirm=True)
            for i in range(2):
                await a.publish(topic, b"keyless-%d" % i, confirm=True)
            await on_server(nats_url, plain)
            await done.wait()
            shares = [ownership(a), ownership(b)]

        async def subjects(js: Any) -> list[str]:
            return [(await js.get_msg(stream_of(topic), seq)).subject for seq in range(1, expected + 1)]

        stored = await on_server(nats_url, subjects)
    print(f"\nshares: {shares}")
    assert stored[: len(keys)] == [f"{partition_of(k, 4)}.{topic}" for k in keys]
    assert stored[len(keys) :] == [topic] * 5
    assert sorted(data for _, data in got) == sorted(
        [k.encode() for k in keys] + [b"keyless-0", b"keyless-1", b"plain-0", b"plain-1", b"plain-2"]
    )
    assert sorted(shares[0].owned + shares[1].owned) == ["base", "p0", "p1", "p2", "p3"]
    assert {len(s.owned) for s in shares} == {2, 3}  # balanced
    assert all(s.members == 2 for s in shares)


async def test_partition_subject_clash_is_refused(nats_url: str) -> None:
    """A topic literally named like another partitioned topic's partition subject cannot get a stream."""
    topic = topic_name("clash")
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url)) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(partitions=3))
            with pytest.raises(teb.InvalidTopicError, match="partition"):
                await bus.configure_topic(f"1.{topic}", teb.TopicOptions())
            await bus.configure_topic(f"{topic}.dlq", teb.TopicOptions())  # the dead letters never clash


async def test_standby_takes_over_a_single_partition_in_order(nats_url: str) -> None:
    """partitions=1: the server serves one instance; when it leaves mid-stream the standby is pinned at once
    and goes on in order, without duplicates."""
    topic, group = topic_name("standby"), "svc"
    tally = Tally(100, 50)
    rng = random.Random(17)
    cfg = config(nats_url, **GROUP_TIMINGS)
    leave_a, leave_b = trio.Event(), trio.Event()
    with trio.fail_after(60):
        async with teb.open_bus(cfg) as pub, trio.open_nursery() as nursery:
            a = await nursery.start(member, cfg, topic, group, handler_for(tally, "a", rng), leave_a, 1)
            b = await nursery.start(member, cfg, topic, group, handler_for(tally, "b", rng), leave_b, 1)
            nursery.start_soon(publish_paced, pub, topic, 100, 50, 0.03)
            await tally.wait(2000)
            first, standby = (a, b) if tally.by_member["a"] else (b, a)
            assert ownership(standby).pinned == ()  # handled nothing so far: it stands by
            (leave_a if first is a else leave_b).set()
            await tally.wait(tally.sent)
            figures = ownership(standby)
            leave_a.set()
            leave_b.set()
    print(f"\nstandby: {tally.figures()}\n  standby at the end: {figures}")
    assert tally.lost == 0
    assert tally.violations == 0
    assert tally.concurrent == 0
    assert tally.duplicates == 0
    assert figures.pinned == ("base",)
    assert figures.resets == 0


def test_group_timings_are_validated() -> None:
    assert NatsConfig().pinned_ttl == 5.0
    assert (NatsConfig().group_heartbeat, NatsConfig().group_session_timeout) == (1.0, 5.0)
    with pytest.raises(teb.InvalidOptionError, match="group_session_timeout"):
        NatsConfig(group_heartbeat=1.0, group_session_timeout=2.0)
    with pytest.raises(teb.InvalidOptionError, match="pinned_ttl"):
        NatsConfig(pinned_ttl=0.05, fetch_max_wait=0.1)
    with pytest.raises(teb.InvalidOptionError):
        NatsConfig(pinned_ttl=0)


async def test_each_slot_has_a_pinned_consumer(nats_url: str) -> None:
    """partitions=3: the group's consumers are the base one (named after the group) and one per partition,
    each a pinned_client consumer with priority_timeout = pinned_ttl, filtering its own subject."""
    topic, group = topic_name("consumers"), "svc"

    async def consumers(js: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for info in await js.consumers_info(stream_of(topic)):
            raw = await js._api_request(f"$JS.API.CONSUMER.INFO.{stream_of(topic)}.{info.name}", b"")
            out[info.name] = raw["config"]
        return out

    async def ignore(msg: teb.Message) -> None:
        await trio.lowlevel.checkpoint()

    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url, pinned_ttl=3.0)) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(partitions=3))
            await bus.subscribe(topic, ignore, group=group)
            found = await on_server(nats_url, consumers)
    assert sorted(found) == ["svc", "svc~p0", "svc~p1", "svc~p2"]
    assert found["svc"]["filter_subject"] == topic
    assert found["svc~p2"]["filter_subject"] == f"2.{topic}"
    for cfg in found.values():
        assert cfg["priority_policy"] == "pinned_client"
        assert cfg["priority_groups"] == ["teb"]
        assert cfg["priority_timeout"] == 3_000_000_000
