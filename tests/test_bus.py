"""Bus behaviour on the memory backend: retries in virtual time, lifecycle, exception policy, backpressure,
results, statistics, bad input, memory broker semantics, and the public exports."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._abc import CLOSE_DEADLINE, HARD_STOP_GRACE, exit_scope
from trio_eventbus.backends import Backend
from trio_eventbus.backends.memory import MemoryBackend
from trio_eventbus.testing import all_tasks, collect
from trio_eventbus.testing.leaks import watch_task_leaks


def env(aggregate: str, n: int) -> teb.Envelope:
    return teb.Envelope(aggregate_id=aggregate, event_type="T", event_version=n + 1, payload=b"%d" % n)


async def test_in_place_retry_backoff_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    done = trio.Event()
    retry = teb.RetryPolicy(max_attempts=5, initial_backoff=1.0, multiplier=2.0, max_backoff=3.0)
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(retry=retry)) as bus:

        async def handler(msg: teb.Message) -> None:
            times.append(trio.current_time())
            if len(times) < 4:
                raise RuntimeError("again")
            done.set()

        await bus.subscribe("t", handler, group="svc")
        await bus.publish("t", b"x", key="k")
        await done.wait()
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 3.0]  # 1, 2, then capped at 3


async def test_redeliver_strategy_naks_with_the_backoff_delay(autojump_clock: trio.testing.MockClock) -> None:
    times: list[tuple[bytes, int, float]] = []
    done = trio.Event()
    retry = teb.RetryPolicy(max_attempts=3, initial_backoff=5.0, strategy="redeliver")
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(retry=retry)) as bus:

        async def handler(msg: teb.Message) -> None:
            times.append((msg.data, msg.delivery_attempt, trio.current_time()))
            if msg.data == b"bad" and msg.delivery_attempt < 3:
                raise RuntimeError("again")
            if msg.data == b"bad":
                done.set()

        await bus.subscribe("t", handler, group="svc")
        start = trio.current_time()
        await bus.publish("t", b"bad", key="k")
        await bus.publish("t", b"next", key="k")
        await done.wait()
        stats = bus.statistics()
    # the lane is not held: "next" (same key) ran before the redelivery of "bad"
    assert [(d, a) for d, a, _ in times] == [(b"bad", 1), (b"next", 1), (b"bad", 2), (b"bad", 3)]
    assert times[2][2] - start == pytest.approx(5.0, abs=0.01)
    assert times[3][2] - times[2][2] == pytest.approx(10.0, abs=0.01)
    assert stats.redelivered == 2


def test_retry_policy_backoff_values() -> None:
    policy = teb.RetryPolicy(initial_backoff=0.1, multiplier=3, max_backoff=1.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.3, 0.9, 1.0])
    assert teb.RetryPolicy(initial_backoff=0).backoff(7) == 0


async def test_dead_lettering_disabled_discards_loudly(caplog: pytest.LogCaptureFixture) -> None:
    broker = teb.MemoryBroker()
    done = trio.Event()
    options = teb.BusOptions(
        dead_letter=teb.DeadLetterPolicy(suffix=None), retry=teb.RetryPolicy(max_attempts=2, initial_backoff=0)
    )
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:

            async def handler(msg: teb.Message) -> None:
                if msg.data == b"poison":
                    raise ValueError("no")
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"poison", key="k")
            await bus.publish("t", b"fine", key="k")
            await done.wait()
            stats = bus.statistics()
    assert stats.discarded == 1
    assert stats.dead_lettered == 0
    assert "discarding it" in caplog.text
    assert broker.topic_statistics("t")["pending[svc]"] == 0  # acked, not redelivered


async def test_hard_stop_naks_unhandled_messages_for_redelivery() -> None:
    broker = teb.MemoryBroker()
    started = trio.Event()
    handled: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def first_bus() -> None:
                async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:

                    async def stuck(msg: teb.Message) -> None:
                        started.set()
                        await trio.sleep_forever()

                    await bus.subscribe("t", stuck, group="svc")
                    await bus.publish("t", b"one", key="k", confirm=True)
                    await bus.publish("t", b"two", key="k", confirm=True)
                    published.set()
                    await trio.sleep_forever()

            published = trio.Event()
            nursery.start_soon(first_bus)
            await started.wait()
            await published.wait()  # both stored before the hard stop (else "two" may not be in the broker yet)
            nursery.cancel_scope.cancel()  # outer cancellation: a hard stop
        assert broker.topic_statistics("t")["pending[svc]"] == 2  # nothing acked
        done = trio.Event()
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:

            async def handler(msg: teb.Message) -> None:
                handled.append(msg.data)
                if len(handled) == 2:
                    done.set()

            await bus.subscribe("t", handler, group="svc")
            await done.wait()
    assert handled == [b"one", b"two"]


async def test_close_timeout_cancels_stuck_handlers(autojump_clock: trio.testing.MockClock) -> None:
    broker = teb.MemoryBroker()
    started = trio.Event()
    options = teb.BusOptions(close_timeout=3)
    async with watch_task_leaks() as tasks, teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:

        async def stuck(msg: teb.Message) -> None:
            started.set()
            await trio.sleep_forever()

        await bus.subscribe("t", stuck, group="svc")
        await bus.publish("t", b"x")
        await started.wait()
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at == pytest.approx(3.0, abs=0.01)
    assert len(tasks.spawned) >= 4 + 16 + 3  # lanes, workers, publisher, results, fetcher: all gone
    assert broker.topic_statistics("t")["pending[svc]"] == 1  # nak'ed, waiting for a new subscriber


async def test_close_delivers_every_pending_result_before_closing() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: list[teb.PublishResult] = []
            async with teb.open_bus(teb.MemoryConfig()) as bus:
                nursery.start_soon(collect, bus.publish_results(), got)
                await bus.configure_topic("t", teb.TopicOptions())
                for i in range(700):
                    bus.publish_envelope_nowait("t", env("a", i))  # never yields: nothing is flushed yet
                assert bus.statistics().pending_publishes == 700
        assert len(got) == 700


async def test_exception_in_block_comes_out_as_itself_after_graceful_close() -> None:
    broker = teb.MemoryBroker()

    async def body() -> None:
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
            await bus.publish("t", b"x")
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await body()
    assert broker.topic_statistics("t")["stored"] == 1  # the pending publish was flushed on the way out


class _Unreachable:
    def create_backend(self) -> Backend:
        class Failing(MemoryBackend):
            @asynccontextmanager
            async def open(self, outcomes: object) -> AsyncIterator[None]:  # type: ignore[override]
                raise teb.BackendUnavailable("broker down")
                yield  # an async generator

        return Failing(teb.MemoryBroker(), 10)


async def test_start_error_comes_out_of_open_bus_unwrapped() -> None:
    tasks = len(all_tasks())
    with pytest.raises(teb.BackendUnavailable, match="broker down"):
        async with teb.open_bus(_Unreachable()):
            raise AssertionError("not reached")
    assert len(all_tasks()) == tasks


async def test_results_channel_backpressure_holds_publishers(autojump_clock: trio.testing.MockClock) -> None:
    options = teb.BusOptions(results_buffer=4, max_pending_publishes=8, publish_batch=2)
    async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
        results = bus.publish_results()
        published = 0

        async def publisher() -> None:
            nonlocal published
            for i in range(100):
                await bus.publish_envelope("t", env("a", i))
                published += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            await trio.sleep(10)  # virtual: nobody reads results
            assert published < 20  # window + results buffer, then backpressure
            assert bus.statistics().results_dropped == 0
            seen = [await results.receive() for _ in range(100)]
        assert len({r.event_id for r in seen}) == 100


async def test_publish_after_close_raises_without_awaiting() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        pass
    with trio.CancelScope() as cs:
        cs.cancel()
        with pytest.raises(teb.BusClosedError):
            await bus.publish("t", b"x")  # raises before any checkpoint could see the cancellation
    assert "closed" in repr(bus)


async def test_statistics_and_repr_show_live_state() -> None:
    gate = trio.Event()
    entered = trio.Event()
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(lanes=4)) as bus:

            async def handler(msg: teb.Message) -> None:
                entered.set()
                await gate.wait()

            await bus.subscribe("t", handler, group="svc")
            for _ in range(3):
                await bus.publish("t", b"x", key="same")
            await entered.wait()
            await trio.testing.wait_all_tasks_blocked()
            stats = bus.statistics()
            assert (stats.in_flight, stats.lanes_busy, stats.lane_depth_max) == (1, 1, 2)
            assert stats.tasks_alive >= 4 + 16 + 1  # lanes, workers, publisher
            assert "in_flight=1" in repr(bus)
            assert "open" in repr(bus)
            gate.set()


async def test_memory_topic_capacity_is_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    broker = teb.MemoryBroker(topic_capacity=5)
    async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
        for i in range(5):
            await bus.publish("t", b"%d" % i)
        await bus.flush()
        await bus.publish("t", b"6th")
        with trio.move_on_after(10) as cs:
            await bus.flush()
        assert cs.cancelled_caught  # no room until someone consumes
        got: list[bytes] = []

        async def handler(msg: teb.Message) -> None:
            got.append(msg.data)

        await bus.subscribe("t", handler, group="svc")
        await bus.flush()
    assert got[-1] == b"6th"


async def test_ephemeral_topics_drop_and_count_unheard_messages() -> None:
    broker = teb.MemoryBroker()
    got: list[bytes] = []
    arrived = trio.Event()
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
            await bus.configure_topic("live", teb.TopicOptions(persistent=False))
            assert not bus.topic_config("live").persistent
            await bus.publish("live", b"nobody listens", confirm=True)

            async def handler(msg: teb.Message) -> None:
                got.append(msg.data)
                arrived.set()

            await bus.subscribe("live", handler, group="svc")
            await bus.publish("live", b"heard")
            await arrived.wait()
    assert got == [b"heard"]
    assert broker.topic_statistics("live")["dropped"] == 1


async def test_retention_limits_and_dedupe_window(autojump_clock: trio.testing.MockClock) -> None:
    broker = teb.MemoryBroker()
    async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
        await bus.configure_topic("capped", teb.TopicOptions(max_messages=3, duplicate_window=60))
        for i in range(5):
            await bus.publish("capped", b"%d" % i, message_id=f"id-{i}")
        await bus.publish("capped", b"dup", message_id="id-4")
        await bus.flush()
        stats = broker.topic_statistics("capped")
        assert (stats["retained"], stats["discarded"], stats["duplicates"]) == (3, 2, 1)
        await trio.sleep(61)
        await bus.publish("capped", b"again", message_id="id-4", confirm=True)
        assert broker.topic_statistics("capped")["duplicates"] == 1  # window passed: stored again


@pytest.mark.parametrize(
    "make",
    [
        lambda: teb.BusOptions(lanes=0),
        lambda: teb.BusOptions(lane_buffer=-1),
        lambda: teb.BusOptions(max_pending_publishes=0),
        lambda: teb.BusOptions(close_timeout=-1),
        lambda: teb.DeadLetterPolicy(suffix=" x"),
        lambda: teb.DeadLetterPolicy(suffix=None, after="park"),
        lambda: teb.BusOptions(service="a b"),
        lambda: teb.RetryPolicy(max_attempts=0),
        lambda: teb.RetryPolicy(initial_backoff=float("nan")),
        lambda: teb.RetryPolicy(strategy="sometimes"),  # type: ignore[arg-type]
        lambda: teb.TopicOptions(partitions=0),
        lambda: teb.TopicOptions(max_age=-5),
        lambda: teb.MemoryConfig(fetch_batch=0),
    ],
)
def test_bad_options_are_refused_with_a_typed_error(make: object) -> None:
    with pytest.raises(ValueError, match=r"must|in"):
        make()  # type: ignore[operator]


async def test_bad_group_and_non_async_handler_leave_bus_running() -> None:
    async def handler(msg: teb.Message) -> None:
        return None

    def sync_handler(msg: teb.Message) -> None:
        return None

    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with pytest.raises(teb.InvalidHandlerError):
            await bus.subscribe("t", sync_handler, group="svc")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            await bus.subscribe("t", handler, group="no spaces")
        with pytest.raises(teb.InvalidOptionError, match="group"):
            await bus.subscribe("t", handler, group="café")  # ASCII only: a NATS durable / Kafka group id
        with pytest.raises(teb.InvalidTopicError):
            await bus.subscribe("t.*", handler, group="svc")
        with pytest.raises(ValueError, match="header"):
            await bus.publish("t", b"x", headers={"bad name": "v"})
        await bus.subscribe("t", handler, group="svc")  # none of the above left a half-made subscription
        assert bus.statistics().subscriptions == 1


async def test_publishes_unanswered_at_close_get_failed_results(autojump_clock: trio.testing.MockClock) -> None:
    broker = teb.MemoryBroker(topic_capacity=1)  # the broker takes one message, then holds the publisher
    got: list[teb.PublishResult] = []
    async with trio.open_nursery() as nursery:
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(close_timeout=2)) as bus:
            nursery.start_soon(collect, bus.publish_results(), got)
            for i in range(3):
                await bus.publish_envelope("t", env("a", i))
        stats = bus.statistics()
    assert [r.success for r in got] == [True, False, False]
    assert all(isinstance(r.error, teb.PublishError) for r in got[1:])
    assert (stats.published, stats.publish_failed, stats.pending_publishes) == (1, 2, 0)


async def test_task_alive_after_graceful_close_is_a_resource_warning(autojump_clock: trio.testing.MockClock) -> None:
    """A handler that shields itself from the close deadline's cancellation keeps its lane task alive: the
    bus names it in a ResourceWarning (an error under ``filterwarnings = error``) instead of hiding it."""
    broker = teb.MemoryBroker()
    started = trio.Event()
    finished: list[float] = []

    async def stubborn(msg: teb.Message) -> None:
        started.set()
        with trio.CancelScope(shield=True):
            await trio.sleep(100)  # ignores the cancellation at the close deadline
        finished.append(trio.current_time())

    closing_at: list[float] = []

    async def run_bus() -> None:
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(close_timeout=1)) as bus:
            await bus.subscribe("t", stubborn, group="svc")
            await bus.publish("t", b"x", key="k")
            await started.wait()
            closing_at.append(trio.current_time())

    async with watch_task_leaks():
        with pytest.warns(ResourceWarning, match=r"1 bus task\(s\) still alive .*teb-lane-"):
            await run_bus()
    assert finished  # the bus waited for the task, it did not abandon it
    assert trio.current_time() - closing_at[0] == pytest.approx(100.0, abs=0.01)


async def test_backend_exit_scope_is_shielded_and_takes_the_hard_stop_grace_under_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with exit_scope() as graceful:
        await trio.sleep(CLOSE_DEADLINE + 1)
    assert graceful.cancelled_caught
    assert trio.current_time() - start == pytest.approx(CLOSE_DEADLINE)
    with trio.CancelScope() as outer:
        outer.cancel()
        start = trio.current_time()
        with exit_scope() as hard:
            await trio.sleep(HARD_STOP_GRACE + 1)  # shielded from the outer cancellation, not from its deadline
        assert hard.cancelled_caught
        assert trio.current_time() - start == pytest.approx(HARD_STOP_GRACE)
        await trio.lowlevel.checkpoint()
    assert outer.cancelled_caught


async def test_backend_exit_scope_keeps_an_earlier_outer_deadline_but_at_least_the_hard_stop_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for outer_seconds, expected in ((5.0, 5.0), (1.0, HARD_STOP_GRACE), (60.0, CLOSE_DEADLINE)):
        with trio.move_on_after(outer_seconds):
            start = trio.current_time()
            with exit_scope() as scope:
                await trio.sleep(CLOSE_DEADLINE + 1)
            assert scope.cancelled_caught
            assert trio.current_time() - start == pytest.approx(expected), outer_seconds


async def test_a_subscription_without_a_group_or_service_is_refused_and_services_each_get_every_message() -> None:
    """Issue 9, row 1: two services subscribing to one topic without ``group=`` silently split the messages.

    Now a subscription needs a group (``group=`` or ``BusOptions(service=...)``): without one it is refused at the
    call with a typed error; two services named by ``service`` each get every message (on a shared broker, as on
    NATS and Kafka), and two instances of one service split them.
    """
    broker = teb.MemoryBroker()
    got: dict[str, list[int]] = {"billing": [], "shipping": []}
    done = {"billing": trio.Event(), "shipping": trio.Event()}

    def handler_for(service: str) -> Callable[[teb.Message], Awaitable[None]]:
        async def handle(message: teb.Message) -> None:
            got[service].append(int(message.data))
            if len(got[service]) == 100:
                done[service].set()

        return handle

    with trio.fail_after(10):
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as plain:
            with pytest.raises(teb.InvalidOptionError, match="needs a consumer group"):
                await plain.subscribe("orders", handler_for("billing"))
            assert plain.statistics().subscriptions == 0
            async with (
                teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(service="billing")) as billing,
                teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(service="shipping")) as shipping,
            ):
                await billing.subscribe("orders", handler_for("billing"))
                await shipping.subscribe("orders", handler_for("shipping"))
                for i in range(100):
                    await plain.publish("orders", str(i).encode())
                await plain.flush()
                await done["billing"].wait()
                await done["shipping"].wait()
    print(f"billing handled {len(got['billing'])}, shipping handled {len(got['shipping'])} of 100")
    assert sorted(got["billing"]) == sorted(got["shipping"]) == list(range(100))
