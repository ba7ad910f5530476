"""``publish_envelope(..., headers=...)``: extra headers (a W3C ``traceparent``) travel beside the envelope's own
wire headers, under the one header rule, to raw subscribers (``Message.headers``) and middleware
(``HandlerContext.headers``); the envelope still decodes for envelope subscribers."""

from __future__ import annotations

import pytest
import trio
from nats_helpers import config, topic_name

import trio_eventbus as teb

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def order(n: int = 1) -> teb.Envelope:
    return teb.Envelope(aggregate_id="order-1", event_type="OrderCreated", event_version=n, payload=b'{"n": 1}')


async def test_envelope_headers_reach_raw_handlers_middleware_and_envelope_handlers() -> None:
    seen_raw: list[teb.Message] = []
    seen_ctx: list[teb.HandlerContext] = []
    seen_env: list[teb.Envelope] = []
    arrived = trio.Event()

    async def trace(ctx: teb.HandlerContext, call_next: teb.CallNext) -> None:
        seen_ctx.append(ctx)
        await call_next()

    async def on_raw(message: teb.Message) -> None:
        seen_raw.append(message)
        if len(seen_raw) == 2:
            arrived.set()

    async def on_envelope(envelope: teb.Envelope) -> None:
        seen_env.append(envelope)

    sent = [order(1), order(2)]
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(middleware=(trace,))) as bus:
            await bus.subscribe("orders", on_raw, group="audit")
            await bus.subscribe_envelope("orders", on_envelope, group="billing")
            await bus.publish_envelope("orders", sent[0], headers={"traceparent": TRACEPARENT})
            bus.publish_envelope_nowait("orders", sent[1], headers={"traceparent": TRACEPARENT, "x-tenant": "t1"})
            await arrived.wait()
            await bus.flush()
            while len(seen_env) < 2:
                await trio.testing.wait_all_tasks_blocked()
    assert [m.headers["traceparent"] for m in seen_raw] == [TRACEPARENT, TRACEPARENT]
    assert seen_raw[1].headers["x-tenant"] == "t1"
    assert seen_raw[0].headers["X-Event-ID"] == sent[0].event_id  # the envelope's own headers are still there
    assert all(ctx.headers.get("traceparent") == TRACEPARENT for ctx in seen_ctx)
    assert len(seen_ctx) == 4  # each message reached both subscriptions through the middleware
    assert [e.event_id for e in seen_env] == [e.event_id for e in sent]


@pytest.mark.parametrize("headers", [{"X-Event-ID": "spoofed"}, {"x-aggregate-id": "other"}, {"bad name": "v"}])
async def test_reserved_or_invalid_envelope_headers_are_refused_at_the_call(headers: dict[str, str]) -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        await bus.configure_topic("orders", teb.TopicOptions())
        with pytest.raises(teb.InvalidHeaderError):
            await bus.publish_envelope("orders", order(), headers=headers)
        with pytest.raises(teb.InvalidHeaderError):
            bus.publish_envelope_nowait("orders", order(), headers=headers)
        assert bus.statistics().pending_publishes == 0


@pytest.mark.nats
async def test_traceparent_arrives_over_nats(nats_url: str) -> None:
    topic = topic_name("traceparent")
    got: list[teb.Message] = []
    arrived = trio.Event()

    async def on_raw(message: teb.Message) -> None:
        got.append(message)
        arrived.set()

    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url)) as bus:
            await bus.subscribe(topic, on_raw, group="tracing")
            env = order()
            await bus.publish_envelope(topic, env, headers={"traceparent": TRACEPARENT}, confirm=True)
            await arrived.wait()
    print(f"sent 1, received {len(got)}, headers {dict(got[0].headers)}")
    assert got[0].headers["traceparent"] == TRACEPARENT
    assert got[0].message_id == env.event_id
