"""Every public async function of the package is a Trio checkpoint on every path; the ``*_nowait`` publish forms.

The cases are keyed by the public async methods, found by introspection of ``trio_eventbus.__all__`` (classes'
public methods too), ``trio_eventbus.testing.__all__`` and the channel ``EventBus.publish_results()`` returns:
a new public async method without a case here fails :func:`test_every_public_async_method_has_checkpoint_cases`.
Each case runs one path (fast: nothing to wait for; slow: it has to wait or provision) under
``trio.testing.assert_checkpoints``, which fails unless the call both checked for cancellation and yielded.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import trio_eventbus as teb
import trio_eventbus.testing
from trio_eventbus._publish.results import ResultChannel
from trio_eventbus.testing import collect

Case = Callable[[], Awaitable[None]]


def env(n: int, aggregate: str = "a") -> teb.Envelope:
    return teb.Envelope(aggregate_id=aggregate, event_type="T", event_version=n + 1, payload=b"%d" % n)


async def noop(_: object) -> None:
    pass


# -- the public async surface, by introspection --------------------------------------------------------------


def public_async_methods() -> set[str]:
    """``Name.method`` for every public coroutine function reachable from the public API.

    Protocols (``Backend``, ``DeliverySink``, ``BackendConfig``) are excluded: they describe methods a backend
    implements and the bus calls, not functions of the API. Dunder methods are excluded as in trio itself
    (``AsyncResource.__aenter__`` is not a checkpoint); ``__anext__``/``__aexit__`` go through ``receive`` and
    ``aclose``.
    """
    found: set[str] = set()
    sources: list[tuple[str, object]] = [(name, getattr(teb, name)) for name in teb.__all__]
    sources += [(f"testing.{name}", getattr(trio_eventbus.testing, name)) for name in trio_eventbus.testing.__all__]
    sources.append(("ResultChannel", ResultChannel))  # the type of EventBus.publish_results()
    for name, obj in sources:
        if inspect.isclass(obj):
            if getattr(obj, "_is_protocol", False):
                continue
            for attr, member in inspect.getmembers(obj):
                if not attr.startswith("_") and inspect.iscoroutinefunction(member):
                    found.add(f"{name}.{attr}")
        elif inspect.iscoroutinefunction(obj):
            found.add(name)
    return found


# -- EventBus.publish ------------------------------------------------------------------------------------------


async def publish_fast() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"provision")
        with trio.testing.assert_checkpoints():
            await bus.publish("t", b"x", key="k")  # topic ready, window has room: no wait, still a checkpoint


async def publish_new_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.publish("t", b"x")  # provisions the topic first


async def publish_window_full() -> None:
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(max_pending_publishes=2)) as bus:
        await bus.publish("t", b"provision")
        await bus.flush()
        bus.publish_nowait("t", b"1")
        bus.publish_nowait("t", b"2")
        with trio.testing.assert_checkpoints():
            await bus.publish("t", b"3")  # waits for a window slot


async def publish_confirm() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"provision")
        with trio.testing.assert_checkpoints():
            await bus.publish("t", b"x", confirm=True)  # waits for the broker's ack


# -- EventBus.publish_envelope ---------------------------------------------------------------------------------


async def publish_envelope_fast() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish_envelope("t", env(0))
        with trio.testing.assert_checkpoints():
            await bus.publish_envelope("t", env(1))


async def publish_envelope_new_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.publish_envelope("t", env(0))


async def publish_envelope_window_full() -> None:
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(max_pending_publishes=1)) as bus:
        await bus.publish_envelope("t", env(0))
        await bus.flush()
        bus.publish_envelope_nowait("t", env(1))
        with trio.testing.assert_checkpoints():
            await bus.publish_envelope("t", env(2))


async def publish_envelope_confirm() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish_envelope("t", env(0))
        with trio.testing.assert_checkpoints():
            await bus.publish_envelope("t", env(1), confirm=True)


# -- EventBus.flush --------------------------------------------------------------------------------------------


async def flush_nothing_pending() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.flush()


async def flush_pending() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"provision")
        bus.publish_nowait("t", b"x")
        assert bus.statistics().pending_publishes > 0
        with trio.testing.assert_checkpoints():
            await bus.flush()
        assert bus.statistics().pending_publishes == 0


async def wait_idle_nothing_to_wait_for() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.wait_idle()


async def wait_idle_handler_running() -> None:
    seen = []

    async def slow(message: teb.Message) -> None:
        await trio.sleep(0.01)
        seen.append(message.data)

    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.subscribe("t", slow, group="g")
        bus.publish_nowait("t", b"x")
        with trio.testing.assert_checkpoints():
            await bus.wait_idle()
        assert seen == [b"x"]


# -- the runner and the decorator registry ---------------------------------------------------------------------


async def serve_main_returns() -> None:
    async def main(bus: teb.EventBus) -> None:
        pass

    with trio.testing.assert_checkpoints():
        await teb.serve(teb.MemoryConfig(), main, signals=())


async def serve_main_waits() -> None:
    async def main(bus: teb.EventBus) -> None:
        await bus.publish("t", b"x")
        await bus.wait_idle()

    with trio.testing.assert_checkpoints():
        await teb.serve(teb.MemoryConfig(), main, signals=())


async def subscribe_all_none() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await teb.Subscribers().subscribe_all(bus)


async def subscribe_all_two() -> None:
    subscribers = teb.Subscribers()
    subscribers.subscriber("a", group="g")(noop)
    subscribers.subscriber("b", group="g", envelope=True)(noop)
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await subscribers.subscribe_all(bus)
        assert bus.statistics().subscriptions == 2


# -- subscribe, subscribe_envelope, configure_topic -----------------------------------------------------------


async def subscribe_new_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.subscribe("t", noop, group="svc")


async def subscribe_ready_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"provision")
        with trio.testing.assert_checkpoints():
            await bus.subscribe("t", noop, group="svc")


async def subscribe_envelope_new_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.subscribe_envelope("t", noop, group="svc")


async def subscribe_envelope_ready_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"provision")
        with trio.testing.assert_checkpoints():
            await bus.subscribe_envelope("t", noop, group="svc")


async def configure_new_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.testing.assert_checkpoints():
            await bus.configure_topic("t", teb.TopicOptions(partitions=2))


async def configure_ready_topic() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.publish("t", b"provision")
        with trio.testing.assert_checkpoints():
            await bus.configure_topic("t", teb.TopicOptions(partitions=2))


# -- the results channel ---------------------------------------------------------------------------------------


async def receive_buffered() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        results = bus.publish_results()
        await bus.publish_envelope("t", env(0))
        await bus.flush()
        with trio.testing.assert_checkpoints():
            result = await results.receive()
        assert result.success


async def receive_empty() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus, trio.open_nursery() as nursery:
        results = bus.publish_results()
        nursery.start_soon(bus.publish_envelope, "t", env(0))
        with trio.testing.assert_checkpoints():
            result = await results.receive()  # waits for the publish above
        assert result.success


async def aclose_results() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        results = bus.publish_results()
        with trio.testing.assert_checkpoints():
            await results.aclose()


async def aclose_results_closed() -> None:
    channel: ResultChannel[int] = ResultChannel(4)
    await channel.aclose()
    with trio.testing.assert_checkpoints():
        await channel.aclose()


async def put_room() -> None:
    channel: ResultChannel[int] = ResultChannel(4)
    with trio.testing.assert_checkpoints():
        await channel.put(1)
    assert channel.receive_nowait() == 1


async def put_full() -> None:
    channel: ResultChannel[int] = ResultChannel(2)
    channel.put_nowait(1)
    channel.put_nowait(2)

    async def drain() -> None:
        assert [await channel.receive(), await channel.receive()] == [1, 2]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        with trio.testing.assert_checkpoints():
            await channel.put(3)  # waits until the reader drained half
    assert channel.receive_nowait() == 3


# -- trio_eventbus.testing.collect -----------------------------------------------------------------------------


async def collect_ended() -> None:
    channel: ResultChannel[int] = ResultChannel(4)
    channel.close_writer()
    got: list[int] = []
    with trio.testing.assert_checkpoints():
        await collect(channel, got)
    assert got == []


async def collect_items() -> None:
    channel: ResultChannel[int] = ResultChannel(4)
    channel.put_nowait(1)
    got: list[int] = []
    async with trio.open_nursery() as nursery:

        async def end() -> None:
            channel.put_nowait(2)
            channel.close_writer()

        nursery.start_soon(end)
        with trio.testing.assert_checkpoints():
            await collect(channel, got)
    assert got == [1, 2]


CASES: dict[str, list[Case]] = {
    "EventBus.publish": [publish_fast, publish_new_topic, publish_window_full, publish_confirm],
    "EventBus.publish_envelope": [
        publish_envelope_fast,
        publish_envelope_new_topic,
        publish_envelope_window_full,
        publish_envelope_confirm,
    ],
    "EventBus.flush": [flush_nothing_pending, flush_pending],
    "EventBus.wait_idle": [wait_idle_nothing_to_wait_for, wait_idle_handler_running],
    "serve": [serve_main_returns, serve_main_waits],
    "Subscribers.subscribe_all": [subscribe_all_none, subscribe_all_two],
    "EventBus.subscribe": [subscribe_new_topic, subscribe_ready_topic],
    "EventBus.subscribe_envelope": [subscribe_envelope_new_topic, subscribe_envelope_ready_topic],
    "EventBus.configure_topic": [configure_new_topic, configure_ready_topic],
    "ResultChannel.receive": [receive_buffered, receive_empty],
    "ResultChannel.aclose": [aclose_results, aclose_results_closed],
    "ResultChannel.put": [put_room, put_full],
    "testing.collect": [collect_ended, collect_items],
}


def test_every_public_async_method_has_checkpoint_cases() -> None:
    assert set(CASES) == public_async_methods()
    assert all(len(cases) >= 2 for cases in CASES.values())  # a fast path and a slow path each


@pytest.mark.parametrize("case", [case for cases in CASES.values() for case in cases], ids=lambda case: case.__name__)
async def test_checkpoint(case: Case) -> None:
    with trio.fail_after(5):
        await case()


async def test_open_bus_enter_and_exit_are_checkpoints() -> None:
    cm = teb.open_bus(teb.MemoryConfig())
    with trio.testing.assert_checkpoints():
        await cm.__aenter__()
    with trio.testing.assert_checkpoints():
        await cm.__aexit__(None, None, None)


# -- cancellation ----------------------------------------------------------------------------------------------


async def test_publish_in_a_cancelled_scope_raises_cancelled_and_queues_nothing() -> None:
    broker = teb.MemoryBroker()
    async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
        results = bus.publish_results()
        await bus.configure_topic("t", teb.TopicOptions())
        done = 0
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(1_000):
                await bus.publish("t", b"x")
                done += 1
        assert scope.cancelled_caught
        assert done == 0
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.publish_envelope("new.topic", env(0))  # cancelled before provisioning, too
        assert scope.cancelled_caught
        assert bus.statistics().pending_publishes == 0
        await bus.flush()
        assert bus.statistics().published == 0
        assert results.statistics().buffered == 0  # no result: nothing was queued
    assert broker.topic_statistics("t")["stored"] == 0


async def test_publish_cancelled_while_waiting_for_the_window_queues_nothing() -> None:
    broker = teb.MemoryBroker()
    async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(max_pending_publishes=1)) as bus:
        await bus.configure_topic("t", teb.TopicOptions())
        bus.publish_nowait("t", b"first")  # the window is full now
        with trio.CancelScope() as scope:

            async def cancel_soon() -> None:
                scope.cancel()  # runs once the publish below waits for a slot
                await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_soon)
                await bus.publish("t", b"second")
        assert scope.cancelled_caught
        await bus.flush()
        assert bus.statistics().published == 1
    assert broker.topic_statistics("t")["stored"] == 1


async def test_other_calls_in_a_cancelled_scope_do_nothing() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.configure_topic("t", teb.TopicOptions(partitions=7))
        assert scope.cancelled_caught
        assert bus.topic_config("t") == teb.TopicOptions()
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.subscribe("t", noop, group="svc")
        assert scope.cancelled_caught
        assert bus.statistics().subscriptions == 0
        await bus.subscribe("t", noop, group="svc")  # the cancelled call left no subscription behind
        assert bus.statistics().subscriptions == 1


async def test_a_publish_loop_lets_other_tasks_run() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with teb.open_bus(teb.MemoryConfig()) as bus, trio.open_nursery() as nursery:
            await bus.configure_topic("t", teb.TopicOptions())
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            before = ticks
            for _ in range(5_000):
                await bus.publish("t", b"x")
            assert ticks - before >= 4_000  # about one tick per publish (0 when publish was not a checkpoint)
            nursery.cancel_scope.cancel()


async def test_move_on_after_around_a_publish_loop_fires_promptly() -> None:
    window = 100_000
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(max_pending_publishes=window)) as bus:
        await bus.configure_topic("t", teb.TopicOptions())
        count = 0
        start = time.perf_counter()
        with trio.move_on_after(0.001) as scope:
            while count < 10 * window:
                await bus.publish("t", b"x")
                count += 1
        elapsed = time.perf_counter() - start
    assert scope.cancelled_caught
    # before publish was a checkpoint, the deadline was noticed only once the window filled (~0.5 s here)
    assert count < window
    assert elapsed < 0.25


async def test_graceful_close_after_2000_publishes_handles_them() -> None:
    broker = teb.MemoryBroker()
    handled = 0

    async def handler(_: teb.Envelope) -> None:
        nonlocal handled
        handled += 1

    with trio.fail_after(10):
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
            await bus.subscribe_envelope("t", handler, group="svc")
            for i in range(2_000):
                await bus.publish_envelope("t", env(i, aggregate=f"a{i % 50}"))
        # the fetchers ran while we published: all but the last few (fetched after close began) are handled
        assert handled >= 1_990
        assert broker.topic_statistics("t")["stored"] == 2_000
        assert handled + broker.topic_statistics("t")["retained"] == 2_000  # the rest waits for redelivery


# -- publish_nowait / publish_envelope_nowait ------------------------------------------------------------------


async def test_nowait_forms_queue_without_yielding_and_refuse_a_full_window() -> None:
    got: list[teb.PublishResult] = []
    envs = [env(n) for n in range(3)]
    options = teb.BusOptions(max_pending_publishes=3)
    async with trio.open_nursery() as nursery, teb.open_bus(teb.MemoryConfig(), options=options) as bus:
        nursery.start_soon(collect, bus.publish_results(), got)
        await bus.configure_topic("t", teb.TopicOptions())
        with trio.testing.assert_no_checkpoints():
            bus.publish_nowait("t", b"1", key="k", headers={"h": "v"}, message_id="m1")
            bus.publish_envelope_nowait("t", envs[0])
            bus.publish_nowait("t", b"3")
            with pytest.raises(trio.WouldBlock, match="window is full"):
                bus.publish_nowait("t", b"4")
            with pytest.raises(trio.WouldBlock, match="window is full"):
                bus.publish_envelope_nowait("t", envs[1])
        assert bus.statistics().pending_publishes == 3  # the refused ones queued nothing
        await bus.flush()
        bus.publish_envelope_nowait("t", envs[2])  # room again
        await bus.flush()
        assert bus.statistics().published == 4
    # one per queued envelope and per raw publish with a message_id (none for the raw one without)
    assert [r.event_id for r in got] == ["m1", envs[0].event_id, envs[2].event_id]


async def test_nowait_to_a_topic_not_provisioned_is_would_block_and_queues_nothing() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with pytest.raises(trio.WouldBlock, match="not provisioned"):
            bus.publish_nowait("fresh", b"x")
        with pytest.raises(trio.WouldBlock, match="not provisioned"):
            bus.publish_envelope_nowait("fresh", env(0))
        with pytest.raises(teb.InvalidTopicError):
            bus.publish_nowait("bad topic", b"x")
        with pytest.raises(teb.InvalidTopicError):
            bus.publish_envelope_nowait("bad..topic", env(0))
        assert bus.statistics().pending_publishes == 0
        await bus.publish("fresh", b"x")  # the awaited form provisions the topic
        bus.publish_nowait("fresh", b"y")
        bus.publish_envelope_nowait("fresh", env(0))
        await bus.flush()
        assert bus.statistics().published == 3


async def test_nowait_forms_validate_like_the_async_forms() -> None:
    options = teb.BusOptions(max_message_bytes=1024)
    async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
        await bus.configure_topic("t", teb.TopicOptions())
        bad_raw: list[tuple[dict[str, object], type[Exception]]] = [
            ({"data": "text"}, teb.InvalidEnvelopeError),
            ({"data": b"x", "key": ""}, teb.InvalidEnvelopeError),
            ({"data": b"x", "message_id": " "}, teb.InvalidEnvelopeError),
            ({"data": b"x", "headers": {"bad name": "v"}}, teb.InvalidEnvelopeError),
            ({"data": b"x", "headers": {"h": "a\nb"}}, teb.InvalidEnvelopeError),
            ({"data": b"x" * 2048}, teb.MessageTooLargeError),
        ]
        for kwargs, error in bad_raw:
            data = kwargs.pop("data")
            with pytest.raises(error):
                bus.publish_nowait("t", data, **kwargs)  # type: ignore[arg-type]
            with pytest.raises(error):
                await bus.publish("t", data, **kwargs)  # type: ignore[arg-type]
        big = teb.Envelope(aggregate_id="a", event_type="T", event_version=1, payload=b"x" * 2048)
        for value, error in [(big, teb.MessageTooLargeError), ("not an envelope", teb.InvalidEnvelopeError)]:
            with pytest.raises(error):
                bus.publish_envelope_nowait("t", value)  # type: ignore[arg-type]
            with pytest.raises(error):
                await bus.publish_envelope("t", value)  # type: ignore[arg-type]
        assert bus.statistics().pending_publishes == 0
        await bus.flush()
        assert bus.statistics().published == 0


async def test_nowait_forms_raise_bus_closed_after_close() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.configure_topic("t", teb.TopicOptions())
    with pytest.raises(teb.BusClosedError):
        bus.publish_nowait("t", b"x")
    with pytest.raises(teb.BusClosedError):
        bus.publish_envelope_nowait("t", env(0))
    with pytest.raises(teb.BusClosedError):
        await bus.publish("t", b"x")


async def test_nowait_loop_with_awaited_fallback_publishes_everything() -> None:
    """The hot-loop idiom of the README: nowait, falling back to the awaited form on WouldBlock."""
    seen: list[int] = []
    done = trio.Event()

    async def handler(msg: teb.Message) -> None:
        seen.append(int(msg.data))
        if len(seen) == 1_000:
            done.set()

    with trio.fail_after(10):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(max_pending_publishes=16)) as bus:
            await bus.subscribe("t", handler, group="svc")
            fallbacks = 0
            for i in range(1_000):
                try:
                    bus.publish_nowait("t", b"%d" % i, key="k")
                except trio.WouldBlock:
                    fallbacks += 1
                    await bus.publish("t", b"%d" % i, key="k")
            await done.wait()
    assert seen == list(range(1_000))  # one key: publish order, whichever form took each message
    assert fallbacks > 0
