"""The publish window and the flush frontier, driven through ``teb.open_bus`` over a FakeBackend.

The fake holds every outcome until the test releases it, so these tests decide when the broker "acks" and in
which order. "Blocked" is established with ``trio.testing.wait_all_tasks_blocked`` (every task, the bus's own
included, is waiting), never with a sleep.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus.testing import collect
from trio_eventbus.testing.fake import FakeBackend, FakeConfig


class Publishers:
    """Tasks that each publish one message and record that they returned (or what they raised)."""

    def __init__(self, bus: teb.EventBus, nursery: trio.Nursery) -> None:
        self.bus, self.nursery = bus, nursery
        self.done: list[int] = []
        self.errors: list[BaseException] = []

    def start(self, count: int, *, confirm: bool = False) -> None:
        for _ in range(count):
            self.nursery.start_soon(self._one, len(self.done) + len(self.errors), confirm)

    async def _one(self, n: int, confirm: bool) -> None:
        try:
            await self.bus.publish("t", b"%d" % n, confirm=confirm)
        except teb.PublishError as exc:
            self.errors.append(exc)
        else:
            self.done.append(n)


async def fill(bus: teb.EventBus, backend: FakeBackend, count: int) -> list[int]:
    """Publish ``count`` messages (each returns at once: the window has room); their seqs, in send order."""
    before = len(backend.sent)
    for i in range(count):
        await bus.publish("t", b"fill-%d" % i)
    await backend.wait_sent(before + count)
    return [m.seq for m in backend.sent[before:]]


async def test_full_window_holds_publishers_until_outcomes_free_slots() -> None:
    backend = FakeBackend()
    options = teb.BusOptions(max_pending_publishes=8, publish_batch=1)  # resume point: 1 free slot
    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend), options=options) as bus:
        seqs = await fill(bus, backend, 8)
        assert bus.statistics().pending_publishes == 8
        waiting = Publishers(bus, nursery)
        waiting.start(3)
        await trio.testing.wait_all_tasks_blocked()
        assert waiting.done == []  # backpressure: the window is full
        assert len(backend.sent) == 8

        await backend.release(seqs[:1])  # one outcome frees one slot: exactly one publisher goes
        await trio.testing.wait_all_tasks_blocked()
        assert len(waiting.done) == 1
        await backend.release(seqs[1:3], teb.BackendUnavailable("gone"))  # a failure frees slots too
        await trio.testing.wait_all_tasks_blocked()
        assert len(waiting.done) == 3
        assert bus.statistics().pending_publishes == 8
        stats = bus.statistics()
        assert (stats.published, stats.publish_failed) == (1, 2)
        await backend.release_all()


@pytest.mark.parametrize(
    ("window", "batch", "resume_at"),
    [(16, 500, 4), (16, 2, 2), (3, 500, 1), (100, 10, 10)],
)
async def test_parked_publishers_resume_together_at_the_hysteresis_point(
    window: int, batch: int, resume_at: int
) -> None:
    """Publishers parked on a full window wake only once ``min(window // 4, publish_batch)`` slots (at least
    one) are free, and then together; a newcomer does not take a slot ahead of them."""
    backend = FakeBackend()
    options = teb.BusOptions(max_pending_publishes=window, publish_batch=batch)
    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend), options=options) as bus:
        seqs = await fill(bus, backend, window)
        parked = Publishers(bus, nursery)
        parked.start(window)
        await trio.testing.wait_all_tasks_blocked()
        for freed in range(1, resume_at):
            await backend.release([seqs[freed - 1]])
            await trio.testing.wait_all_tasks_blocked()
            assert parked.done == [], f"woken with {freed} free slots; resume point is {resume_at}"
        if resume_at > 1:  # a newcomer while slots are free but publishers are parked: it queues behind them
            newcomer = Publishers(bus, nursery)
            newcomer.start(1)
            await trio.testing.wait_all_tasks_blocked()
            assert newcomer.done == []
        await backend.release([seqs[resume_at - 1]])
        await trio.testing.wait_all_tasks_blocked()
        assert len(parked.done) == resume_at
        while backend.held:
            await backend.release_all()
            await trio.testing.wait_all_tasks_blocked()
        assert len(parked.done) == window
        assert bus.statistics().pending_publishes == 0


async def test_confirm_waits_for_its_own_outcome_and_raises_on_failure() -> None:
    backend = FakeBackend()
    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend)) as bus:
        confirmed = Publishers(bus, nursery)
        confirmed.start(2, confirm=True)
        await backend.wait_sent(2)
        await trio.testing.wait_all_tasks_blocked()
        assert confirmed.done == []
        first, second = (m.seq for m in backend.sent)
        await backend.release([second], teb.BackendUnavailable("refused"))
        await trio.testing.wait_all_tasks_blocked()
        assert confirmed.done == []
        assert [type(e) for e in confirmed.errors] == [teb.PublishError]
        assert isinstance(confirmed.errors[0].__cause__, teb.BackendUnavailable)
        await backend.release([first])
        await trio.testing.wait_all_tasks_blocked()
        assert confirmed.done == [0]


class Flushes:
    """``bus.flush()`` calls running as tasks; ``done[i]`` once the i-th returned."""

    def __init__(self, bus: teb.EventBus, nursery: trio.Nursery) -> None:
        self.bus, self.nursery = bus, nursery
        self.done: list[bool] = []

    def start(self) -> None:
        self.done.append(False)
        self.nursery.start_soon(self._flush, len(self.done) - 1)

    async def _flush(self, i: int) -> None:
        await self.bus.flush()
        self.done[i] = True


async def test_flush_waits_exactly_for_the_messages_before_it_with_out_of_order_outcomes() -> None:
    backend = FakeBackend()
    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend)) as bus:
        flushes = Flushes(bus, nursery)
        first = await fill(bus, backend, 5)
        flushes.start()  # A: waits for the first five
        await trio.testing.wait_all_tasks_blocked()
        second = await fill(bus, backend, 3)
        flushes.start()  # B: waits for all eight
        await trio.testing.wait_all_tasks_blocked()
        assert flushes.done == [False, False]

        await backend.release([second[2], second[0]])  # later messages first: nobody's frontier moves
        await trio.testing.wait_all_tasks_blocked()
        assert flushes.done == [False, False]
        await backend.release(first[:4])  # all but A's last message
        await trio.testing.wait_all_tasks_blocked()
        assert flushes.done == [False, False]
        await backend.release([first[4]], teb.BackendUnavailable("failed"))  # a failure is an outcome too
        await trio.testing.wait_all_tasks_blocked()
        assert flushes.done == [True, False]  # A returns although B's messages 6 and 8 are acked and 7 is not
        await backend.release([second[1]])
        await trio.testing.wait_all_tasks_blocked()
        assert flushes.done == [True, True]


async def test_flush_with_nothing_pending_returns_at_once_and_is_a_checkpoint() -> None:
    backend = FakeBackend(auto_ack=True)
    async with teb.open_bus(FakeConfig(backend)) as bus:
        await bus.publish("t", b"x", confirm=True)
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.flush()  # nothing pending: a checkpoint, so the cancelled scope raises here
            pytest.fail("flush did not checkpoint")
        assert scope.cancelled_caught
        with trio.fail_after(1):  # every outcome is in: returns without waiting for anything
            await bus.flush()


async def test_messages_still_held_at_close_get_failed_results() -> None:
    """The broker never answered before the bus closed: each envelope still gets exactly one result."""
    backend = FakeBackend()
    got: list[teb.PublishResult] = []

    async def on_results(batch: Sequence[teb.PublishResult]) -> None:
        got.extend(batch)

    options = teb.BusOptions(on_publish_results=on_results, close_timeout=0)
    async with teb.open_bus(FakeConfig(backend), options=options) as bus:
        env = teb.Envelope(aggregate_id="a", event_type="T", event_version=1, payload=b"{}")
        await bus.publish_envelope("t", env)
        await backend.wait_sent(1)
    assert [(r.event_id, r.success, type(r.error)) for r in got] == [(env.event_id, False, teb.PublishError)]
    assert bus.statistics().pending_publishes == 0


# -- the window in bytes -----------------------------------------------------------------------------------------


def byte_options(**kwargs: object) -> teb.BusOptions:
    """A byte limit of 1,000 bytes (bodies up to 1,000 bytes) and a count window that never binds."""
    return teb.BusOptions(max_message_bytes=1_000, max_pending_bytes=1_000, publish_batch=1, **kwargs)  # type: ignore[arg-type]


async def test_bytes_in_flight_bound_the_window_and_are_freed_with_the_outcome() -> None:
    backend = FakeBackend()
    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend), options=byte_options()) as bus:
        for _ in range(4):
            await bus.publish("t", b"x" * 250)  # 4 x 250 = the limit exactly
        await backend.wait_sent(4)
        assert bus.statistics().pending_publish_bytes == 1_000
        with pytest.raises(trio.WouldBlock, match="window is full"):
            bus.publish_nowait("t", b"y")  # one more byte would pass the limit
        waiting = Publishers(bus, nursery)
        waiting.start(1)  # an awaited publish waits instead
        await trio.testing.wait_all_tasks_blocked()
        assert waiting.done == []
        assert bus.statistics().pending_publishes == 4
        await backend.release([backend.sent[0].seq])  # the outcome frees its 250 bytes: the waiter goes
        await trio.testing.wait_all_tasks_blocked()
        assert waiting.done == [0]
        assert bus.statistics().pending_publish_bytes == 750 + 1
        bus.publish_nowait("t", b"z" * 249)  # fits exactly again
        await backend.wait_sent(6)
        await backend.release_all()
        await trio.testing.wait_all_tasks_blocked()
        assert bus.statistics().pending_publish_bytes == 0


async def test_waiting_publishers_are_served_in_order_even_when_a_later_one_would_fit() -> None:
    """First come, first served: a large waiting message is not overtaken by small ones (no starvation)."""
    backend = FakeBackend()
    order: list[str] = []

    async def publish(name: str, size: int) -> None:
        await bus.publish("t", b"x" * size)
        order.append(name)

    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend), options=byte_options()) as bus:
        await bus.publish("t", b"x" * 600)
        await backend.wait_sent(1)
        nursery.start_soon(publish, "large", 500)  # 600 + 500 > 1,000: waits
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(publish, "small", 100)  # would fit, but queues behind "large"
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            bus.publish_nowait("t", b"x")
        assert order == []
        await backend.release([backend.sent[0].seq])
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(order) == ["large", "small"]  # admitted together (their run order is the scheduler's)
        assert bus.statistics().pending_publish_bytes == 600
        await backend.release_all()


async def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_one_in() -> None:
    backend = FakeBackend()
    done: list[str] = []

    async def publish(name: str, size: int, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await bus.publish("t", b"x" * size)
            done.append(name)

    async with trio.open_nursery() as nursery, teb.open_bus(FakeConfig(backend), options=byte_options()) as bus:
        await bus.publish("t", b"x" * 600)
        await bus.publish("t", b"x" * 300)
        await backend.wait_sent(2)
        large = await nursery.start(publish, "large", 500)
        await nursery.start(publish, "small", 50)
        await trio.testing.wait_all_tasks_blocked()
        await backend.release([backend.sent[1].seq])  # 600 in flight: "large" still does not fit
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        large.cancel()  # the head leaves: "small" fits now
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["small"]
        assert bus.statistics().pending_publish_bytes == 650
        await backend.release_all()


def test_max_pending_bytes_is_derived_from_max_message_bytes_and_validated() -> None:
    assert teb.BusOptions().pending_bytes_limit == 64 * 1024 * 1024
    assert teb.BusOptions(max_message_bytes=4_000).pending_bytes_limit == 256_000
    assert teb.BusOptions(max_pending_bytes=5_000, max_message_bytes=5_000).pending_bytes_limit == 5_000
    with pytest.raises(teb.InvalidOptionError) as info:
        teb.BusOptions(max_pending_bytes=999, max_message_bytes=1_000)
    assert info.value.field == "max_pending_bytes"


async def test_big_envelopes_in_a_hot_loop_stay_within_the_byte_limit() -> None:
    """The user's 1,500 envelopes of 700 KB, published in the README's hot loop with results read: the
    publisher used to hold all of them (1 GB); the bytes in flight now stay within the default 64 MiB."""
    import resource

    total = 1_500
    payload = b'"' + b"x" * 700_000 + b'"'
    handled = 0
    everything = trio.Event()
    results: list[teb.PublishResult] = []

    async def handler(envelope: teb.Envelope) -> None:
        nonlocal handled
        handled += 1
        if handled == total:
            everything.set()

    peak = 0
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, teb.open_bus(teb.MemoryConfig()) as bus:
            limit = teb.BusOptions().pending_bytes_limit
            nursery.start_soon(collect, bus.publish_results(), results)
            await bus.subscribe_envelope("big", handler, group="big-consumer")
            for i in range(total):
                envelope = teb.Envelope(aggregate_id=f"a{i % 10}", event_type="Big", event_version=1, payload=payload)
                try:
                    bus.publish_envelope_nowait("big", envelope)
                except trio.WouldBlock:
                    await bus.publish_envelope("big", envelope)
                peak = max(peak, bus.statistics().pending_publish_bytes)
            await everything.wait()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"sent {total}, handled {handled}, results {len(results)}, peak bytes in flight {peak / 2**20:.1f} MiB "
        f"(limit {limit / 2**20:.0f} MiB), peak RSS of the test process {rss_mb:.0f} MiB"
    )
    assert handled == total
    assert len(results) == total
    assert all(r.success for r in results)
    assert 0 < peak <= limit
