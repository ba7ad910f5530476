"""Partitioned consumer groups on the memory broker: several buses in one group keep the per-key promise.

Each key belongs to one partition (``partition_of``), each partition is owned by one member of the group at a
time, and a rebalance (a member joining, leaving, or hard-stopped) hands a partition over only after its old
owner settled what it held. Every test runs real buses on one shared :class:`MemoryBroker` under
``autojump_clock`` (handlers take 0-2 ms of Trio's clock) and prints its figures.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._partition import partition_of
from trio_eventbus.backends.memory import MemoryStatistics, MemorySubscriptionStatistics

GROUP = "svc"


@attrs.define
class Ledger:
    """What the handlers of every member saw: the figures of a group test."""

    sent: int = 0
    handlings: int = 0
    duplicates: int = 0
    violations: int = 0
    concurrent: int = 0
    seen: dict[str, set[int]] = attrs.field(factory=lambda: defaultdict(set))
    highest: dict[str, int] = attrs.field(factory=dict)
    active: Counter[str] = attrs.field(factory=Counter)
    by_member: Counter[str] = attrs.field(factory=Counter)
    partitions_of: dict[str, set[int]] = attrs.field(factory=lambda: defaultdict(set))  # member -> partitions seen
    unique: int = 0
    marks: dict[int, trio.Event] = attrs.field(factory=dict)  # unique count -> event
    rng: random.Random = attrs.field(factory=lambda: random.Random(7))

    def at(self, count: int) -> trio.Event:
        """An event set once ``count`` distinct messages were handled."""
        return self.marks.setdefault(count, trio.Event())

    def handler(self, member: str, partitions: int, slow: float = 0.002) -> Callable[[teb.Envelope], object]:
        async def handle(env: teb.Envelope) -> None:
            key = env.aggregate_id
            if self.active[key]:
                self.concurrent += 1
            self.active[key] += 1
            try:
                await trio.sleep(self.rng.random() * slow)
            finally:
                self.active[key] -= 1
            self.record(member, key, int(env.payload), partitions)

        return handle

    def record(self, member: str, key: str, seq: int, partitions: int) -> None:
        self.handlings += 1
        self.by_member[member] += 1
        self.partitions_of[member].add(partition_of(key, partitions))
        if seq in self.seen[key]:
            self.duplicates += 1
            return
        if seq < self.highest.get(key, -1):
            self.violations += 1
        self.highest[key] = max(seq, self.highest.get(key, -1))
        self.seen[key].add(seq)
        self.unique += 1
        if (mark := self.marks.get(self.unique)) is not None:
            mark.set()

    @property
    def lost(self) -> int:
        return self.sent - self.unique

    def report(self, title: str) -> None:
        print(
            f"\n{title}: sent={self.sent} handled={self.handlings} lost={self.lost} duplicates={self.duplicates} "
            f"order_violations={self.violations} concurrent_handlings={self.concurrent} "
            f"by_member={dict(sorted(self.by_member.items()))}"
        )


@attrs.define
class Harness:
    """Members of ``GROUP`` on one broker, each stopped on its own (gracefully or hard)."""

    topic: str
    partitions: int
    ledger: Ledger = attrs.field(factory=Ledger)
    broker: teb.MemoryBroker = attrs.field(factory=teb.MemoryBroker)
    stops: dict[str, trio.Event] = attrs.field(factory=dict)
    scopes: dict[str, trio.CancelScope] = attrs.field(factory=dict)
    buses: dict[str, teb.EventBus] = attrs.field(factory=dict)

    async def add(self, nursery: trio.Nursery, name: str, slow: float = 0.002) -> teb.EventBus:
        self.stops[name] = trio.Event()
        self.scopes[name] = trio.CancelScope()
        bus: teb.EventBus = await nursery.start(self._member, name, slow)
        self.buses[name] = bus
        return bus

    async def _member(
        self, name: str, slow: float, *, task_status: trio.TaskStatus[teb.EventBus] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One instance of the consuming service: a bus in ``GROUP`` until its stop event (graceful) or its
        cancel scope (hard stop)."""
        with self.scopes[name]:
            async with teb.open_bus(teb.MemoryConfig(broker=self.broker)) as bus:
                await bus.configure_topic(self.topic, teb.TopicOptions(partitions=self.partitions))
                await bus.subscribe_envelope(self.topic, self.ledger.handler(name, self.partitions, slow), group=GROUP)
                task_status.started(bus)
                await self.stops[name].wait()

    def owned(self, name: str) -> tuple[int, ...]:
        return self.details(name).partitions

    def details(self, name: str) -> MemorySubscriptionStatistics:
        stats = self.buses[name].statistics().backend
        assert isinstance(stats, MemoryStatistics)
        (sub,) = [s for s in stats.subscription_details if (s.topic, s.group) == (self.topic, GROUP)]
        return sub

    def stop_all(self) -> None:
        for stop in self.stops.values():
            stop.set()

    async def publish(self, aggregates: int, per_key: int) -> None:
        """``aggregates x per_key`` envelopes, interleaved across keys, each key's ``payload`` counting from 0."""
        async with teb.open_bus(teb.MemoryConfig(broker=self.broker)) as pub:
            for seq in range(per_key):
                for agg in range(aggregates):
                    env = teb.Envelope(
                        aggregate_id=f"order-{agg}", event_type="E", event_version=1, payload=b"%d" % seq
                    )
                    await pub.publish_envelope(self.topic, env)
                    self.ledger.sent += 1
            await pub.flush()

    async def wait_all(self, total: int) -> None:
        """Until ``total`` distinct messages were handled (or 600 s of Trio's clock: the checks then fail)."""
        with trio.move_on_after(600):
            await self.ledger.at(total).wait()


def check(ledger: Ledger, *, duplicates_at_most: int = 0) -> None:
    assert ledger.lost == 0
    assert ledger.violations == 0
    assert ledger.concurrent == 0
    assert ledger.duplicates <= duplicates_at_most


@pytest.mark.parametrize(
    ("names", "per_key", "expected"),
    [
        (["a", "b"], 30, {"a": (0, 2, 4), "b": (1, 3, 5)}),
        (["a", "b", "c"], 60, {"a": (0, 3), "b": (1, 4), "c": (2, 5)}),
    ],
    ids=["2-members", "3-members"],
)
async def test_members_keep_per_key_order(
    autojump_clock: trio.testing.MockClock, names: list[str], per_key: int, expected: dict[str, tuple[int, ...]]
) -> None:
    """Two or three buses in one group, 6 partitions: each owns its round-robin share, handles only keys of its
    partitions, and no key is handled out of order or by two members at once."""
    h = Harness(f"pcg-{len(names)}", partitions=6)
    async with trio.open_nursery() as nursery:
        for name in names:
            await h.add(nursery, name)
        assignment = {name: h.owned(name) for name in names}
        nursery.start_soon(h.publish, 100, per_key)
        await h.wait_all(100 * per_key)
        h.stop_all()
    h.ledger.report(f"{len(names)} members, 6 partitions, 100 keys x {per_key}")
    check(h.ledger)
    assert assignment == expected
    for x, y in itertools.combinations(names, 2):
        assert h.ledger.partitions_of[x].isdisjoint(h.ledger.partitions_of[y])
    assert all(h.ledger.by_member[name] for name in names)


async def test_member_joining_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    """A third member joins after a third of the stream: partitions move to it only once their old owners
    settled what they held; nothing is lost, duplicated, reordered or handled concurrently."""
    h = Harness("pcg-join", partitions=6)
    total = 100 * 60
    async with trio.open_nursery() as nursery:
        await h.add(nursery, "a")
        await h.add(nursery, "b")
        nursery.start_soon(h.publish, 100, 60)
        await h.ledger.at(total // 3).wait()
        await h.add(nursery, "c")
        joined_at = h.ledger.unique
        owned = {name: h.owned(name) for name in "abc"}
        rebalances = {name: h.details(name).rebalances for name in "abc"}
        await h.wait_all(total)
        h.stop_all()
    h.ledger.report(f"member c joined after {joined_at} handled")
    check(h.ledger)
    assert owned == {"a": (0, 3), "b": (1, 4), "c": (2, 5)}
    assert rebalances == {"a": 3, "b": 2, "c": 1}  # a: its join, b's, c's
    assert h.ledger.by_member["c"] > 0


async def test_member_leaving_gracefully_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    """A member closes its bus after a third of the stream: it drains and acks what it holds, then its
    partitions move; nothing is lost, duplicated, reordered or handled concurrently."""
    h = Harness("pcg-leave", partitions=6)
    total = 100 * 60
    async with trio.open_nursery() as nursery:
        for name in "abc":
            await h.add(nursery, name)
        nursery.start_soon(h.publish, 100, 60)
        await h.ledger.at(total // 3).wait()
        h.stops["c"].set()
        left_at = h.ledger.unique
        await h.wait_all(total)
        owned = {name: h.owned(name) for name in "ab"}
        by_c = h.ledger.by_member["c"]
        h.stop_all()
    h.ledger.report(f"member c left gracefully after {left_at} handled")
    check(h.ledger)
    assert owned == {"a": (0, 2, 4), "b": (1, 3, 5)}
    assert 0 < by_c < total // 2


async def test_member_hard_stopped_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    """A member is cancelled (hard stop) after a third of the stream: what it held unsettled is nak'ed and
    redelivered to the new owners in order; duplicates are bounded by what it held."""
    h = Harness("pcg-kill", partitions=6)
    total = 100 * 60
    async with trio.open_nursery() as nursery:
        for name in "abc":
            await h.add(nursery, name)
        nursery.start_soon(h.publish, 100, 60)
        await h.ledger.at(total // 3).wait()
        held = h.buses["c"].statistics().backend.unsettled
        h.scopes["c"].cancel()
        killed_at = h.ledger.unique
        await h.wait_all(total)
        h.stop_all()
    h.ledger.report(f"member c hard-stopped after {killed_at} handled, holding {held} unsettled")
    check(h.ledger, duplicates_at_most=held)
    assert held > 0


async def test_single_partition_one_member_takes_all_the_other_stands_by(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """partitions=1: the first member handles everything, the second stands by; when the first leaves
    (gracefully), the second takes over where it stopped."""
    h = Harness("pcg-one", partitions=1)
    total = 100 * 30
    async with trio.open_nursery() as nursery:
        await h.add(nursery, "a")
        await h.add(nursery, "b")
        before = (h.owned("a"), h.owned("b"))
        nursery.start_soon(h.publish, 100, 30)
        await h.ledger.at(total // 2).wait()
        by_b_before = h.ledger.by_member["b"]
        h.stops["a"].set()
        await h.wait_all(total)
        after = h.owned("b")
        h.stop_all()
    h.ledger.report("partitions=1, a leaves half-way")
    check(h.ledger)
    assert before == ((0,), ())
    assert by_b_before == 0
    assert h.ledger.by_member["b"] > 0
    assert after == (0,)


async def test_keyless_messages_go_round_robin_over_partitions(autojump_clock: trio.testing.MockClock) -> None:
    """A keyless message belongs to partition ``offset % partitions``: two members of a 2-partition group
    get every other message each."""
    broker = teb.MemoryBroker()
    got: dict[str, list[int]] = defaultdict(list)
    done = trio.Event()
    stop = trio.Event()

    async def run(name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(message: teb.Message) -> None:
            got[name].append(int(message.data))
            if sum(map(len, got.values())) == 100:
                done.set()

        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
            await bus.configure_topic("pcg-keyless", teb.TopicOptions(partitions=2))
            await bus.subscribe("pcg-keyless", handle, group=GROUP)
            task_status.started()
            await stop.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(run, "a")
        await nursery.start(run, "b")
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as pub:
            for i in range(100):
                await pub.publish("pcg-keyless", b"%d" % i)
        await done.wait()
        stop.set()
    print(f"\nkeyless: a={len(got['a'])} b={len(got['b'])}")
    assert sorted(got["a"]) == list(range(0, 100, 2))
    assert sorted(got["b"]) == list(range(1, 100, 2))


async def test_a_revoked_partition_moves_only_once_its_old_owner_settled() -> None:
    """The old owner still runs a handler of a key whose partition moves to a joining member: the new owner
    takes none of that partition's messages (its statistics show it waiting) until the handler returns; then
    it handles them, in order."""
    broker = teb.MemoryBroker()
    topic = "pcg-revoke"
    holding = trio.Event()
    release = trio.Event()
    order: list[tuple[str, int]] = []
    done = trio.Event()
    stop = trio.Event()
    key = next(f"k{i}" for i in range(100) if partition_of(f"k{i}", 2) == 1)  # partition 1 moves to b

    def handler(name: str) -> Callable[[teb.Message], object]:
        async def handle(message: teb.Message) -> None:
            n = int(message.data)
            if n == 0:
                holding.set()
                await release.wait()
            order.append((name, n))
            if n == 4:
                done.set()

        return handle

    async def run(name: str, *, task_status: trio.TaskStatus[teb.EventBus] = trio.TASK_STATUS_IGNORED) -> None:
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(partitions=2))
            await bus.subscribe(topic, handler(name), group=GROUP)
            task_status.started(bus)
            await stop.wait()

    def details(bus: teb.EventBus) -> MemorySubscriptionStatistics:
        stats = bus.statistics().backend
        assert isinstance(stats, MemoryStatistics)
        return stats.subscription_details[0]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(run, "a")
            async with teb.open_bus(teb.MemoryConfig(broker=broker)) as pub:
                await pub.publish(topic, b"0", key=key)
                await holding.wait()
                b = await nursery.start(run, "b")
                for n in range(1, 5):
                    await pub.publish(topic, b"%d" % n, key=key)
                await pub.flush()
                await trio.testing.wait_all_tasks_blocked()
                waiting = (details(a).partitions, details(b).partitions, details(b).waiting)
                handled_while_held = list(order)
                release.set()
                await done.wait()
            stop.set()
    print(f"\nwhile a held message 0: a owns/b owns/b waits {waiting}, handled {handled_while_held}; then {order}")
    assert waiting == ((0,), (1,), (1,))
    assert handled_while_held == []
    assert order == [("a", 0), ("b", 1), ("b", 2), ("b", 3), ("b", 4)]
