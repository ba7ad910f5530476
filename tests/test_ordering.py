"""The router, keyed lanes and the worker pool: stable hashing, per-key order for any lane count, concurrency
across keys, backpressure, cancellation. Driven through the live path: ``Router.route`` with real deliveries."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_eventbus._dispatch.budget import ByteBudget
from trio_eventbus._dispatch.lanes import KeyedLanes, fnv1a_32
from trio_eventbus._dispatch.router import Router
from trio_eventbus._dispatch.settle import Counters
from trio_eventbus.backends import Delivery


def delivery(key: str | None, n: int, attempt: int = 1) -> Delivery:
    return Delivery("t", b"%d" % n, {}, key, None, attempt, token=n)


def router(
    lanes: int = 4,
    lane_buffer: int = 4,
    workers: int = 2,
    worker_buffer: int = 4,
    abandon: Callable[[Delivery], None] | None = None,
) -> Router:
    return Router(
        lanes=lanes,
        lane_buffer=lane_buffer,
        workers=workers,
        worker_buffer=worker_buffer,
        abandon=abandon or (lambda d: None),
        counters=Counters(),
        max_buffered_bytes=1 << 30,
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)],  # published FNV-1a test vectors
)
def test_fnv1a_32_known_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


def test_lane_of_is_stable_and_spreads() -> None:
    lanes: KeyedLanes[object] = KeyedLanes(16, 4, lambda arg: None, ByteBudget(1 << 30))
    assert lanes.lane_of("order-1") == fnv1a_32(b"order-1") % 16
    spread = {lanes.lane_of(f"order-{i}") for i in range(200)}
    assert len(spread) == 16
    assert lanes.queue_of("order-1") is lanes.queue_of("order-1") is lanes.by_key["order-1"]


@given(
    lane_count=st.integers(1, 9),
    keys=st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=300),
    batch=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_per_key_order_for_any_lane_count(lane_count: int, keys: list[str], batch: int, seed: int) -> None:
    rng = random.Random(seed)
    seen: dict[str, list[int]] = defaultdict(list)

    async def run(d: Delivery) -> None:
        for _ in range(rng.randrange(3)):  # random interleaving between lanes
            await trio.lowlevel.checkpoint()
        assert d.key is not None
        seen[d.key].append(int(d.body))

    async def main() -> None:
        r = router(lanes=lane_count, lane_buffer=2)
        deliveries = [delivery(key, n) for n, key in enumerate(keys)]
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            for i in range(0, len(deliveries), batch):  # fetched batches, routed as the fetchers do
                await r.route(run, deliveries[i : i + batch])
            r.close_inputs()
            await r.wait_finished()

    trio.run(main)
    expected: dict[str, list[int]] = defaultdict(list)
    for n, key in enumerate(keys):
        expected[key].append(n)
    assert seen == expected


async def test_different_keys_run_concurrently_and_one_slow_key_holds_only_its_lane() -> None:
    release = trio.Event()
    slow_started = trio.Event()
    handled: list[str] = []

    async def run(d: Delivery) -> None:
        assert d.key is not None
        if d.key == "slow":
            slow_started.set()
            await release.wait()
        handled.append(d.key)

    r = router(lanes=8)
    slow_lane = r.lanes.lane_of("slow")
    others = [k for k in (f"k{i}" for i in range(50)) if r.lanes.lane_of(k) != slow_lane][:5]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            await r.route(run, [delivery("slow", 0), *(delivery(k, 1) for k in others)])
            await slow_started.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(handled) == sorted(others)  # nobody waited for "slow"
            assert r.lanes.busy == 1
            assert r.in_flight == 1
            release.set()
            r.close_inputs()
            await r.wait_finished()
    assert handled[-1] == "slow"


async def test_keyless_deliveries_run_concurrently_on_the_worker_pool() -> None:
    running = 0
    peak = 0
    gate = trio.Event()

    async def run(d: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    r = router(workers=3, worker_buffer=8)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            await r.route(run, [delivery(None, n) for n in range(5)])
            await trio.testing.wait_all_tasks_blocked()
            assert peak == 3  # every worker took one; two wait in the pool's queue
            assert r.workers.depths() == [2]
            assert r.lanes.busy == 0
            gate.set()
            r.close_inputs()
            await r.wait_finished()
    assert running == 0


async def test_route_counts_redeliveries() -> None:
    async def run(d: Delivery) -> None:
        return None

    r = router()
    async with trio.open_nursery() as nursery:
        await r.start(nursery)
        await r.route(run, [delivery("k", 0), delivery("k", 1, attempt=2), delivery(None, 2, attempt=5)])
        r.close_inputs()
        await r.wait_finished()
    assert r._counters.redelivered == 2


async def test_cancellation_abandons_held_and_queued_items() -> None:
    abandoned: list[int] = []
    started = trio.Event()

    async def run(d: Delivery) -> None:
        started.set()
        await trio.sleep_forever()

    r = router(workers=1, worker_buffer=10, abandon=lambda d: abandoned.append(int(d.body)))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            await r.route(run, [delivery(None, i) for i in range(4)])
            await r.route(run, [delivery("k", 4), delivery("k", 5)])
            await started.wait()
            nursery.cancel_scope.cancel()
    assert sorted(abandoned) == [0, 1, 2, 3, 4, 5]
    assert r.workers.alive == 0
    assert r.lanes.alive == 0


async def test_router_cancel_abandons_and_routing_after_close_abandons_at_once() -> None:
    abandoned: list[int] = []
    started = trio.Event()

    async def run(d: Delivery) -> None:
        started.set()
        await trio.sleep_forever()

    r = router(lanes=1, abandon=lambda d: abandoned.append(int(d.body)))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            await r.route(run, [delivery("k", 0), delivery("k", 1)])
            await started.wait()
            r.cancel()  # what the bus does at the close deadline
            await r.wait_finished()
            assert sorted(abandoned) == [0, 1]
            r.close_inputs()
            await r.route(run, [delivery("k", 2), delivery(None, 3)])  # queues closed: handed back
            assert sorted(abandoned) == [0, 1, 2, 3]


async def test_route_waits_while_lane_is_full() -> None:
    gate = trio.Event()
    handled: list[int] = []

    async def run(d: Delivery) -> None:
        await gate.wait()
        handled.append(int(d.body))

    r = router(lanes=1, lane_buffer=2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            await r.route(run, [delivery("k", i) for i in range(3)])  # one held by the task, two buffered
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.05) as cs:
                await r.route(run, [delivery("k", 3)])
            assert cs.cancelled_caught  # backpressure: no room
            gate.set()
            await r.route(run, [delivery("k", 3)])
            r.close_inputs()
            await r.wait_finished()
    assert handled == [0, 1, 2, 3]


async def test_bounded_queue_poll_and_wait_readable() -> None:
    from trio_eventbus._queue import BoundedQueue

    queue: BoundedQueue[int] = BoundedQueue(2, resume_at=0)
    marker = object()
    assert queue.poll(marker) is marker
    readable: list[bool] = []

    async def waiter() -> None:
        readable.append(await queue.wait_readable())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert readable == []  # nothing queued: still waiting
        queue.put_nowait(1)
    assert readable == [True]
    assert len(queue) == 1  # wait_readable took nothing
    queue.put_nowait(2)
    with pytest.raises(trio.WouldBlock):
        queue.put_nowait(3)
    assert queue.poll(marker) == 1
    queue.close()
    assert await queue.wait_readable() is True  # closed, but an item is left to drain
    assert queue.poll(marker) == 2
    assert await queue.wait_readable() is False  # closed and empty
    assert queue.poll(marker) is marker


async def test_full_lane_takes_its_sender_back_once_half_drained() -> None:
    """Lanes resume a blocked router at half capacity, so a saturated lane is fed in runs, not one by one."""
    gate = trio.Event()
    routed = trio.Event()

    async def run(d: Delivery) -> None:
        await gate.wait()

    r = router(lanes=1, lane_buffer=4)
    queue = r.lanes.queue_of("k")

    async def fetcher() -> None:
        await r.route(run, [delivery("k", i) for i in range(8)])
        routed.set()

    def bodies() -> list[int]:
        return [int(item[1].body) for item in queue._items]

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await r.start(nursery)
            nursery.start_soon(fetcher)
            await trio.testing.wait_all_tasks_blocked()
            # 0-3 filled the lane and the router parked on 4; the lane task took 0 (blocked in run): one slot is
            # free, but above half the router stays parked
            assert bodies() == [1, 2, 3]
            taken = queue.poll(None)
            assert taken is not None
            assert int(taken[1].body) == 1  # now half drained: the router is woken and routes a run (4, 5)
            await trio.testing.wait_all_tasks_blocked()
            assert bodies() == [2, 3, 4, 5]
            r.cancel()  # the lane hands back what it holds; the router routes 6, 7 into the freed lane
            await routed.wait()
