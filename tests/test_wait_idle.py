"""EventBus.wait_idle() on the memory backend: returns once everything published has been handled and acked.

Slow handlers and backoffs run on ``autojump_clock`` (no real time).

Each test would fail without it: right after the publishes (or a flush) the handlers have not run yet.
"""

from __future__ import annotations

import trio
import trio.testing

import trio_eventbus as teb


async def test_one_bus_every_message_is_handled_when_wait_idle_returns(autojump_clock: trio.testing.MockClock) -> None:
    handled: list[bytes] = []

    async def slow(message: teb.Message) -> None:
        await trio.sleep(0.05)  # a database write, say
        handled.append(message.data)

    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="svc", lanes=4)) as bus:
        await bus.subscribe("jobs", slow)
        for n in range(200):
            await bus.publish("jobs", b"%d" % n, key=f"k{n % 7}" if n % 3 else None)  # lanes and workers
        await bus.flush()
        after_flush = len(handled)
        await bus.wait_idle()
        s = bus.statistics()
        print(f"sent=200 handled_after_flush={after_flush} handled={len(handled)} in_flight={s.in_flight}")
        assert after_flush < 200  # flush alone is not enough
        assert len(handled) == s.handled == 200
        assert s.in_flight == s.lane_depth_max == s.worker_queue_depth == s.backend.unsettled == 0


async def test_a_publisher_bus_and_a_subscriber_bus_on_one_broker(autojump_clock: trio.testing.MockClock) -> None:
    broker = teb.MemoryBroker()
    handled = 0

    async def on_order(event: teb.Envelope) -> None:
        nonlocal handled
        await trio.sleep(0.01)
        handled += 1

    config = teb.MemoryConfig(broker=broker)
    async with teb.open_bus(config) as pub, teb.open_bus(config, options=teb.BusOptions(service="shipping")) as sub:
        await sub.subscribe_envelope("orders", on_order)
        for n in range(100):
            await pub.publish_envelope(
                "orders", teb.Envelope(aggregate_id=f"o-{n % 10}", event_type="T", event_version=1, payload=b"{}")
            )
        await pub.wait_idle()  # every publish is stored on the broker (pub subscribes to nothing)
        assert handled < 100
        await sub.wait_idle()  # the broker's backlog of sub's group counts: not only what sub holds
        print(f"sent=100 handled={handled} pending={broker.topic_statistics('orders')['pending[shipping]']}")
        assert handled == 100
        assert broker.topic_statistics("orders")["pending[shipping]"] == 0


async def test_a_handler_that_publishes_is_covered_by_one_call(autojump_clock: trio.testing.MockClock) -> None:
    billed: list[str] = []

    async def on_order(message: teb.Message) -> None:
        await trio.sleep(0.01)
        await bus.publish("billing", message.data)  # published after wait_idle was called

    async def on_bill(message: teb.Message) -> None:
        await trio.sleep(0.01)
        billed.append(message.data.decode())

    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="svc")) as bus:
        await bus.subscribe("orders", on_order)
        await bus.subscribe("billing", on_bill)
        for n in range(20):
            await bus.publish("orders", b"%d" % n, key="one")
        await bus.wait_idle()
        assert billed == [str(n) for n in range(20)]


async def test_it_waits_for_retries_and_redeliveries(autojump_clock: trio.testing.MockClock) -> None:
    attempts: dict[bytes, int] = {}
    done: list[bytes] = []

    async def flaky(message: teb.Message) -> None:
        attempts[message.data] = attempts.get(message.data, 0) + 1
        if attempts[message.data] < 3:
            raise RuntimeError("not yet")
        done.append(message.data)

    retry = teb.RetryPolicy(max_attempts=5, initial_backoff=1.0, strategy="redeliver")
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="svc", retry=retry)) as bus:
        await bus.subscribe("jobs", flaky)
        for n in range(5):
            await bus.publish("jobs", b"%d" % n, key=f"k{n}")
        await bus.wait_idle()  # nak'ed messages wait on the broker for their backoff: not idle
        s = bus.statistics()
        print(f"sent=5 handled={s.handled} retries={s.retries} redelivered={s.redelivered}")
        assert sorted(done) == [b"%d" % n for n in range(5)]
        assert s.handled == 5


async def test_cancelled_it_abandons_only_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    handled = 0
    release = trio.Event()

    async def blocked(message: teb.Message) -> None:
        nonlocal handled
        await release.wait()
        handled += 1

    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="svc")) as bus:
        await bus.subscribe("jobs", blocked)
        await bus.publish("jobs", b"x")
        with trio.move_on_after(1.0) as scope:
            await bus.wait_idle()
        assert scope.cancelled_caught
        release.set()
        await bus.wait_idle()
        assert handled == 1


async def test_after_close_it_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"x")
    with trio.testing.assert_checkpoints():
        await bus.wait_idle()
