"""The public middleware hook (``BusOptions.middleware``) on the memory backend: order, context, outcome,
once per attempt, skipping the handler, cancellation, validation, and no cost without middleware."""

from __future__ import annotations

import sys
import types

import pytest
import trio
import trio.testing

import trio_eventbus as teb


def recorder(name: str, log: list[str]) -> teb.Middleware:
    async def middleware(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        log.append(f"{name}>")
        try:
            await call_next()
        except Exception as exc:
            log.append(f"{name}!{type(exc).__name__}")
            raise
        log.append(f"<{name}")

    return middleware


async def test_middlewares_run_outermost_first_in_tuple_order() -> None:
    log: list[str] = []
    done = trio.Event()
    options = teb.BusOptions(middleware=(recorder("a", log), recorder("b", log)))
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(m: teb.Message) -> None:
                log.append("handler")
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"x", key="k")
            await done.wait()
    assert log == ["a>", "b>", "handler", "<b", "<a"]


async def test_the_context_describes_the_message_and_attempt() -> None:
    seen: list[teb.HandlerContext] = []
    got: list[object] = []
    done = trio.Event()

    async def capture(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        seen.append(ctx)
        await call_next()

    e = teb.Envelope(aggregate_id="order-1", event_type="Placed", event_version=1, payload=b'{"n":1}')
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(middleware=(capture,))) as bus:

            async def handler(value: object) -> None:
                got.append(value)
                if len(got) == 2:
                    done.set()

            await bus.subscribe("raw", handler, group="g1")
            await bus.subscribe_envelope("orders", handler, group="svc")
            await bus.publish("raw", b"data", key="k", headers={"h": "v"}, message_id="m-1")
            await bus.publish_envelope("orders", e)
            await done.wait()
    raw, envelope = sorted(seen, key=lambda ctx: ctx.topic)[::-1]
    assert (raw.topic, raw.group, raw.attempt, raw.key, raw.message_id) == ("raw", "g1", 1, "k", "m-1")
    assert dict(raw.headers) == {"h": "v"}
    assert isinstance(raw.message, teb.Message)
    assert raw.message.data == b"data"
    assert (envelope.topic, envelope.group, envelope.key, envelope.message_id) == (
        "orders",
        "svc",
        "order-1",
        e.event_id,
    )
    assert envelope.message == e
    assert envelope.headers["X-Event-Type"] == "Placed"
    assert {id(ctx.message) for ctx in seen} == {id(v) for v in got}  # the handler gets the context's value
    with pytest.raises(AttributeError):
        raw.attempt = 2  # type: ignore[misc]  # frozen


async def test_the_chain_runs_once_per_in_place_attempt_and_sees_each_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    attempts: list[int] = []
    done = trio.Event()

    async def count(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        attempts.append(ctx.attempt)
        await call_next()

    options = teb.BusOptions(middleware=(count, recorder("r", log)), retry=teb.RetryPolicy(initial_backoff=1.0))
    with trio.fail_after(600):  # virtual time: a broken retry fails, not hangs
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(m: teb.Message) -> None:
                assert m.delivery_attempt == attempts[-1]
                if m.delivery_attempt < 3:
                    raise KeyError("again")
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"x", key="k")
            await done.wait()
            stats = bus.statistics()
        assert attempts == [1, 2, 3]
        assert log == ["r>", "r!KeyError", "r>", "r!KeyError", "r>", "<r"]
        assert (stats.handled, stats.handler_errors, stats.retries) == (1, 2, 2)


async def test_the_chain_runs_again_for_each_broker_redelivery(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []
    done = trio.Event()

    async def count(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        attempts.append(ctx.attempt)
        await call_next()

    retry = teb.RetryPolicy(max_attempts=3, initial_backoff=1.0, strategy="redeliver")
    with trio.fail_after(600):  # virtual time: a broken retry fails, not hangs
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(middleware=(count,), retry=retry)) as bus:

            async def handler(m: teb.Message) -> None:
                if m.delivery_attempt < 2:
                    raise KeyError("again")
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"x", key="k")
            await done.wait()
        assert attempts == [1, 2]


async def test_swallowing_the_failure_marks_the_attempt_handled() -> None:
    broker = teb.MemoryBroker()
    observed: list[BaseException] = []
    done = trio.Event()

    async def forgive(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        try:
            await call_next()
        except ValueError as exc:
            observed.append(exc)
        done.set()

    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(middleware=(forgive,))) as bus:

            async def handler(m: teb.Message) -> None:
                raise ValueError("tolerated")

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"x", key="k")
            await done.wait()
            await trio.testing.wait_all_tasks_blocked()
            stats = bus.statistics()
    assert [str(e) for e in observed] == ["tolerated"]
    assert (stats.handled, stats.handler_errors, stats.retries, stats.dead_lettered) == (1, 0, 0, 0)
    assert broker.topic_statistics("t")["pending[svc]"] == 0


async def test_raising_in_a_middleware_fails_the_attempt() -> None:
    handled: list[bytes] = []
    dead: list[teb.Message] = []
    done = trio.Event()

    async def veto(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        if ctx.topic == "t":
            raise PermissionError("vetoed")
        await call_next()

    options = teb.BusOptions(middleware=(veto,), retry=teb.RetryPolicy(max_attempts=2, initial_backoff=0))
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(m: teb.Message) -> None:
                handled.append(m.data)

            async def on_dead(m: teb.Message) -> None:
                dead.append(m)
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.subscribe("t.dlq", on_dead, group="svc")
            await bus.publish("t", b"x", key="k")
            await done.wait()
            stats = bus.statistics()
    assert handled == []
    assert dead[0].headers["X-DLQ-Error"] == "PermissionError: vetoed"
    assert dead[0].headers["X-DLQ-Attempts"] == "2"
    assert (stats.handler_errors, stats.dead_lettered) == (2, 1)


async def test_a_middleware_may_skip_the_handler_and_the_message_is_acked() -> None:
    """The idempotent-inbox shape: a message id seen before is acked without running the handler."""
    broker = teb.MemoryBroker()
    seen_ids: set[str | None] = set()
    handled: list[bytes] = []
    done = trio.Event()

    async def inbox(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        if ctx.message_id not in seen_ids:
            await call_next()
            seen_ids.add(ctx.message_id)
        if ctx.message.data == b"last":  # type: ignore[union-attr]
            done.set()

    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(middleware=(inbox,))) as bus:

            async def handler(m: teb.Message) -> None:
                handled.append(m.data)

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"first", key="k", message_id="id-1")
            await bus.publish("t", b"again", key="k", headers={"retry": "1"}, message_id="id-2")
            seen_ids.add("id-2")  # as if handled before the broker's dedupe window
            await bus.publish("t", b"last", key="k", message_id="id-3")
            await done.wait()
            await trio.testing.wait_all_tasks_blocked()
            stats = bus.statistics()
    assert handled == [b"first", b"last"]
    assert stats.handled == 3
    assert broker.topic_statistics("t")["pending[svc]"] == 0


async def test_cancellation_reaches_the_middleware_and_the_message_is_redelivered() -> None:
    broker = teb.MemoryBroker()
    started = trio.Event()
    log: list[str] = []

    async def observe(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        try:
            await call_next()
        finally:
            log.append(f"left attempt {ctx.attempt}")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def first_bus() -> None:
                options = teb.BusOptions(middleware=(observe,))
                async with teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:

                    async def stuck(m: teb.Message) -> None:
                        started.set()
                        await trio.sleep_forever()

                    await bus.subscribe("t", stuck, group="svc")
                    await bus.publish("t", b"x", key="k", confirm=True)
                    await trio.sleep_forever()

            nursery.start_soon(first_bus)
            await started.wait()
            nursery.cancel_scope.cancel()  # hard stop
        assert log == ["left attempt 1"]
        assert broker.topic_statistics("t")["pending[svc]"] == 1  # nak'ed, not acked
        done = trio.Event()
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(middleware=(observe,))) as bus:

            async def handler(m: teb.Message) -> None:
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await done.wait()
    assert log == ["left attempt 1", "left attempt 2"]


async def test_an_undecodable_envelope_never_reaches_the_middleware() -> None:
    calls: list[str] = []
    done = trio.Event()

    async def spy(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        calls.append(ctx.topic)
        await call_next()

    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(middleware=(spy,))) as bus:

            async def on_order(e: teb.Envelope) -> None:
                raise AssertionError("not an envelope: never handled")

            async def on_dead(m: teb.Message) -> None:
                done.set()

            await bus.subscribe_envelope("orders", on_order, group="svc")
            await bus.subscribe("orders.dlq", on_dead, group="svc")
            await bus.publish("orders", b"garbage", key="k")
            await done.wait()
    assert calls == ["orders.dlq"]  # only the dead-letter subscriber's message went through the chain


def test_middleware_must_be_a_tuple_of_callables() -> None:
    async def mw(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        await call_next()

    assert teb.BusOptions().middleware == ()
    assert teb.BusOptions(middleware=(mw,)).middleware == (mw,)
    with pytest.raises(teb.InvalidOptionError, match="middleware must be a tuple of callables"):
        teb.BusOptions(middleware=[mw])  # type: ignore[arg-type]
    with pytest.raises(teb.InvalidOptionError, match="middleware must be a tuple of callables"):
        teb.BusOptions(middleware=(mw, "not callable"))  # type: ignore[arg-type]


async def test_a_sync_middleware_is_refused_by_open_bus() -> None:
    def sync(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        return None

    with pytest.raises(teb.InvalidHandlerError, match="middleware must be an async function"):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(middleware=(sync,))):  # type: ignore[arg-type]
            raise AssertionError("not reached")


async def test_without_middleware_no_context_is_built_and_the_handler_is_awaited_directly() -> None:
    """No middleware: no HandlerContext, no chain frame; the handler's caller is the pipeline's own coroutine.
    With one: a context per attempt, and the middleware is the handler's caller."""
    callers: list[str] = []
    contexts = 0
    init = teb.HandlerContext.__init__.__code__
    done = trio.Event()

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        nonlocal contexts
        if event == "call" and frame.f_code is init:
            contexts += 1

    async def handler(m: teb.Message) -> None:
        callers.append(sys._getframe(1).f_code.co_qualname)
        done.set()

    async def mw(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        await call_next()

    with trio.fail_after(5):
        for options in (teb.BusOptions(), teb.BusOptions(middleware=(mw,))):
            done = trio.Event()
            async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
                await bus.subscribe("t", handler, group="svc")
                sys.setprofile(profile)
                try:
                    await bus.publish("t", b"x", key="k")
                    await done.wait()
                finally:
                    sys.setprofile(None)
            callers.append(f"contexts={contexts}")
    assert callers == ["compose.<locals>.run", "contexts=0", mw.__qualname__, "contexts=1"]
