"""Handler context (issue 9, item 2): ``subscribe*(..., context=True)`` hands the handler a HandlerContext
(attempt, topic, group, headers, key, message id, raw delivery metadata) next to its value; the simple
``handler(value)`` form is unchanged, and mypy checks both shapes (the overloads)."""

from __future__ import annotations

import pathlib
import sys
import textwrap
import types

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus.backends.memory import MemoryBackend

# The user's code from the issue: "needed the attempt number, headers or topic in an envelope handler".


async def test_an_envelope_handler_gets_attempt_headers_topic_and_delivery_info(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[teb.Envelope, teb.HandlerContext]] = []
    done = trio.Event()
    e1 = teb.Envelope(aggregate_id="order-1", event_type="Placed", event_version=1, payload=b"{}")
    e2 = teb.Envelope(aggregate_id="order-1", event_type="Paid", event_version=1, payload=b"{}")
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=3, initial_backoff=1.0))
    with trio.fail_after(60):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(envelope: teb.Envelope, ctx: teb.HandlerContext) -> None:
                seen.append((envelope, ctx))
                if envelope.event_type == "Paid" and ctx.attempt == 1:
                    raise RuntimeError("flaky")
                if envelope.event_type == "Paid":
                    done.set()

            await bus.subscribe_envelope("orders", handler, group="billing", context=True)
            await bus.publish_envelope("orders", e1)
            await bus.publish_envelope("orders", e2)
            await done.wait()
    print("calls:", [(e.event_type, c.attempt, dict(c.delivery_info)) for e, c in seen])
    assert [(e.event_type, c.attempt) for e, c in seen] == [("Placed", 1), ("Paid", 1), ("Paid", 2)]
    placed, ctx = seen[0]
    assert ctx.message is placed
    assert (ctx.topic, ctx.group, ctx.key, ctx.message_id) == ("orders", "billing", "order-1", e1.event_id)
    assert ctx.headers["X-Event-Type"] == "Placed"
    assert [dict(c.delivery_info) for _, c in seen] == [{"offset": 0}, {"offset": 1}, {"offset": 1}]


async def test_a_raw_handler_with_context_gets_the_message_and_its_context() -> None:
    got: list[tuple[teb.Message, teb.HandlerContext]] = []
    done = trio.Event()
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig()) as bus:

            async def handler(message: teb.Message, ctx: teb.HandlerContext) -> None:
                got.append((message, ctx))
                done.set()

            await bus.subscribe("raw", handler, group="svc", context=True)
            await bus.publish("raw", b"data", key="k", headers={"traceparent": "00-abc-def-01"}, message_id="m-1")
            await done.wait()
    ((message, ctx),) = got
    assert message.data == b"data"
    assert ctx.message is message
    assert (ctx.topic, ctx.group, ctx.attempt, ctx.key, ctx.message_id) == ("raw", "svc", 1, "k", "m-1")
    assert dict(ctx.headers) == {"traceparent": "00-abc-def-01"}


async def test_context_handlers_run_inside_the_middleware_with_the_same_context() -> None:
    seen: list[object] = []
    done = trio.Event()

    async def outer(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        seen.append(ctx)
        await call_next()

    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(middleware=(outer,))) as bus:

            async def handler(message: teb.Message, ctx: teb.HandlerContext) -> None:
                seen.append(ctx)
                done.set()

            await bus.subscribe("t", handler, group="svc", context=True)
            await bus.publish("t", b"x", key="k")
            await done.wait()
    assert len(seen) == 2
    assert seen[0] is seen[1]


async def test_the_plain_form_is_unchanged_and_builds_no_context() -> None:
    got: list[teb.Message] = []
    done = trio.Event()
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig()) as bus:

            async def handler(message: teb.Message) -> None:  # one argument: no context
                got.append(message)
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"x", key="k")
            await done.wait()
    assert [m.data for m in got] == [b"x"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"context": 1}, "context"),
        ({"retry": {"max_attempts": 2}}, "retry"),
        ({"dead_letter": ".dlq"}, "dead_letter"),
    ],
)
async def test_bad_subscription_options_are_refused_at_the_call(kwargs: dict[str, object], field: str) -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:

        async def handler(message: teb.Message) -> None:
            pass

        with pytest.raises(teb.InvalidOptionError) as info:
            await bus.subscribe("t", handler, group="svc", **kwargs)  # type: ignore[call-overload]
        assert info.value.field == field
        assert bus.statistics().subscriptions == 0


def test_mypy_checks_both_handler_shapes(tmp_path: pathlib.Path) -> None:
    """The overloads: a context handler without ``context=True`` (or the reverse) is a type error."""
    from mypy import api  # a dev dependency: the test must run, never skip

    code = textwrap.dedent(
        """
        import trio_eventbus as teb

        async def plain(m: teb.Message) -> None: ...
        async def with_ctx(m: teb.Message, ctx: teb.HandlerContext) -> None: ...
        async def env_ctx(e: teb.Envelope, ctx: teb.HandlerContext) -> None: ...

        async def main(bus: teb.EventBus) -> None:
            await bus.subscribe("t", plain, group="g")
            await bus.subscribe("t", with_ctx, group="g", context=True)
            await bus.subscribe_envelope("t", env_ctx, group="g", context=True)
            await bus.subscribe("t", with_ctx, group="g")  # line 12: error
            await bus.subscribe("t", plain, group="g", context=True)  # line 13: error
        """
    )
    path = tmp_path / "shapes.py"
    path.write_text(code)
    out, _err, status = api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(path)])
    print(out)
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1
    assert sorted({line.split(":")[1] for line in errors}) == ["12", "13"]


async def test_delivery_info_is_read_only_when_a_context_is_built() -> None:
    """The plain path never asks the backend for delivery metadata; ``context=True`` does, once per attempt."""
    reads = 0
    code = MemoryBackend.delivery_info.__code__

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        nonlocal reads
        if event == "call" and frame.f_code is code:
            reads += 1

    async def plain(m: teb.Message) -> None:
        done.set()

    async def with_ctx(m: teb.Message, ctx: teb.HandlerContext) -> None:
        done.set()

    counts = []
    with trio.fail_after(5):
        for context in (False, True):
            done = trio.Event()
            async with teb.open_bus(teb.MemoryConfig()) as bus:
                if context:
                    await bus.subscribe("t", with_ctx, group="svc", context=True)
                else:
                    await bus.subscribe("t", plain, group="svc")
                sys.setprofile(profile)
                try:
                    await bus.publish("t", b"x", key="k")
                    await done.wait()
                finally:
                    sys.setprofile(None)
            counts.append(reads)
    assert counts == [0, 1]
