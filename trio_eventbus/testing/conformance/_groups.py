"""The partitioned-group scenario of the conformance suite: two buses in one group keep the per-key promise.

Two buses subscribe to one topic with 4 partitions (``TopicOptions(partitions=4)``) in the same group; a third
bus publishes 20 keys x 25 envelopes, interleaved across keys; handlers take up to 2 ms. Every envelope must be
handled, per key in publish order, and never two envelopes of one key at the same time (across both buses):
each partition is owned by one member of the group at a time (Kafka consumer groups, NATS partitioned groups,
the memory broker's groups).

Figures (:class:`GroupReport`): ``sent``, ``handled`` (handlings, redeliveries included), ``lost`` (sent, never
handled), ``duplicates``, ``order_violations`` (a first handling of an envelope after one of a later envelope of
the same key), ``concurrent`` (a handling that started while another of the same key ran), ``by_member``.
"""

from __future__ import annotations

import random
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Awaitable, Callable

import attrs
import trio

import trio_eventbus as teb

from ._case import BackendCase, envelope, open_watched_bus, running, seq_of, unique_topic

__all__ = ["GroupReport", "group_order_scenario"]

_KEYS = 20
_PER_KEY = 25
_PARTITIONS = 4
_GROUP = "conformance-pcg"


@attrs.frozen
class GroupReport:
    """The figures of one run of :func:`group_order_scenario` (see the module docstring)."""

    backend: str
    sent: int
    handled: int
    lost: int
    duplicates: int
    order_violations: int
    concurrent: int
    by_member: tuple[int, int]

    def __str__(self) -> str:
        return (
            f"group {self.backend}: sent={self.sent} handled={self.handled} lost={self.lost} "
            f"duplicates={self.duplicates} order_violations={self.order_violations} "
            f"concurrent_handlings={self.concurrent} by_member={self.by_member}"
        )


async def group_order_scenario(case: BackendCase) -> GroupReport:
    """Run the scenario (see the module docstring) and return its figures; waits, bounded by the case's
    timeout, until every envelope was handled."""
    topic = unique_topic(case, "pcg")
    options = teb.TopicOptions(partitions=_PARTITIONS)
    rng = random.Random(11)
    seen: dict[str, set[int]] = defaultdict(set)
    highest: dict[str, int] = {}
    active: Tally[str] = Tally()
    by_member = [0, 0]
    figures = {"handled": 0, "duplicates": 0, "violations": 0, "concurrent": 0}
    total = _KEYS * _PER_KEY
    done = trio.Event()

    def handler(member: int) -> Callable[[teb.Envelope], Awaitable[None]]:
        async def handle(env: teb.Envelope) -> None:
            key, n = env.aggregate_id, seq_of(env)
            if active[key]:
                figures["concurrent"] += 1
            active[key] += 1
            try:
                await trio.sleep(rng.random() * 0.002)  # the handler's work, not synchronisation
            finally:
                active[key] -= 1
            figures["handled"] += 1
            by_member[member] += 1
            if n in seen[key]:
                figures["duplicates"] += 1
                return
            if n < highest.get(key, -1):
                figures["violations"] += 1
            highest[key] = max(n, highest.get(key, -1))
            seen[key].add(n)
            if sum(map(len, seen.values())) == total:
                done.set()

        return handle

    async with running(case), open_watched_bus(case) as a, open_watched_bus(case) as b, open_watched_bus(case) as pub:
        for bus in (a, b, pub):
            await bus.configure_topic(topic, options)
        await a.subscribe_envelope(topic, handler(0), group=_GROUP)
        await b.subscribe_envelope(topic, handler(1), group=_GROUP)
        for n in range(_PER_KEY):
            for k in range(_KEYS):
                await pub.publish_envelope(topic, envelope(f"agg-{k}", n))
        await pub.flush()
        with trio.move_on_after(case.timeout / 2):
            await done.wait()
    unique = sum(map(len, seen.values()))
    return GroupReport(
        backend=case.name,
        sent=total,
        handled=figures["handled"],
        lost=total - unique,
        duplicates=figures["duplicates"],
        order_violations=figures["violations"],
        concurrent=figures["concurrent"],
        by_member=(by_member[0], by_member[1]),
    )
