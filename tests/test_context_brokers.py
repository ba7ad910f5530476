"""Handler context, non-retryable errors and parked keys against real brokers (NATS JetStream, Kafka): the raw
``delivery_info`` each backend reads from its delivery, and the dead-letter policies end to end.

Each test: ``order-3`` fails once (retried: the context shows attempt 2 and the broker's own delivery count or
offset); ``order-1`` v2 raises ``teb.NonRetryableError`` (dead-lettered at once, its key parked), v3 is parked (to
the DLQ unhandled); ``order-2`` flows throughout.
"""

from __future__ import annotations

import kafka_helpers
import nats_helpers
import pytest
import trio

import trio_eventbus as teb
from trio_eventbus.testing.conformance import envelope, seq_of


class App:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, dict[str, object]]] = []
        self.handled: list[tuple[str, int]] = []
        self.dead: list[teb.Message] = []
        self.changed = trio.Condition()

    async def handler(self, e: teb.Envelope, ctx: teb.HandlerContext) -> None:
        assert e.aggregate_id is not None
        n = seq_of(e)
        self.calls.append((e.aggregate_id, n, ctx.attempt, dict(ctx.delivery_info)))
        if e.aggregate_id == "order-3" and ctx.attempt == 1:
            raise ConnectionError("flaky")
        if e.aggregate_id == "order-1" and n == 2:
            raise teb.NonRetryableError("bad total")
        self.handled.append((e.aggregate_id, n))
        async with self.changed:
            self.changed.notify_all()

    async def on_dead(self, m: teb.Message) -> None:
        self.dead.append(m)
        async with self.changed:
            self.changed.notify_all()

    async def run(self, bus: teb.EventBus, topic: str, retry: teb.RetryPolicy) -> None:
        policy = teb.DeadLetterPolicy(after="park")
        await bus.subscribe_envelope(
            topic, self.handler, group="billing", context=True, retry=retry, dead_letter=policy
        )
        await bus.subscribe(topic + ".dlq", self.on_dead, group="ops")
        for n in (1, 2, 3):
            await bus.publish_envelope(topic, envelope("order-1", n))
            await bus.publish_envelope(topic, envelope("order-2", n))
        await bus.publish_envelope(topic, envelope("order-3", 1))
        async with self.changed:
            while len(self.handled) < 5 or len(self.dead) < 2:
                await self.changed.wait()
        assert bus.parked_keys(topic, group="billing") == frozenset({"order-1"})

    def check(self) -> None:
        print("calls", self.calls)
        print("dead", [(m.key, m.headers["X-DLQ-Reason"]) for m in self.dead])
        assert sorted(self.handled) == [("order-1", 1), ("order-2", 1), ("order-2", 2), ("order-2", 3), ("order-3", 1)]
        assert [m.headers["X-DLQ-Reason"] for m in self.dead] == ["non-retryable", "parked"]
        trace = self.dead[0].headers["X-DLQ-Traceback"]  # carried unchanged by the broker
        assert " handler | NonRetryableError: bad total" in trace
        assert "test_context_brokers.py:" in trace
        assert [c[1:3] for c in self.calls if c[0] == "order-1"] == [(1, 1), (2, 1)]  # v3 never ran
        assert [c[1:3] for c in self.calls if c[0] == "order-3"] == [(1, 1), (1, 2)]


@pytest.mark.nats
async def test_context_retry_and_dead_letter_park_on_nats(nats_url: str) -> None:
    topic = nats_helpers.topic_name("ctx")
    app = App()
    retry = teb.RetryPolicy(max_attempts=3, initial_backoff=0.01, strategy="redeliver")
    with trio.fail_after(30):
        async with teb.open_bus(nats_helpers.config(nats_url)) as bus:
            await app.run(bus, topic, retry)
    app.check()
    first, again = (c[3] for c in app.calls if c[0] == "order-3")
    assert first["stream"] == again["stream"] == nats_helpers.stream_of(topic)
    assert first["consumer"] == "billing"
    assert (first["num_delivered"], again["num_delivered"]) == (1, 2)  # the broker's count: a redelivery
    assert first["stream_seq"] == again["stream_seq"] == 7  # the seventh message of the topic's stream
    assert isinstance(first["consumer_seq"], int)
    assert isinstance(first["num_pending"], int)


@pytest.mark.kafka
async def test_context_retry_and_dead_letter_park_on_kafka(kafka_bootstrap: str) -> None:
    topic = kafka_helpers.unique("ctx")
    app = App()
    retry = teb.RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with trio.fail_after(60):
        async with teb.open_bus(kafka_helpers.config(kafka_bootstrap)) as bus:
            await app.run(bus, topic, retry)
    app.check()
    infos = [c[3] for c in app.calls]
    assert all(info["partition"] == 0 for info in infos)  # one partition (the default TopicOptions)
    assert sorted({info["offset"] for info in infos}) == [0, 1, 2, 3, 5, 6]  # order-1 v3 (4) was parked
    first, again = (c[3] for c in app.calls if c[0] == "order-3")
    assert first == again == {"partition": 0, "offset": 6}  # an in-place retry of the same record
