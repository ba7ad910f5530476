"""The handler pipeline, step by step (settle, decode, retry, dead-letter) and composed on the memory backend.

The steps are driven directly with real deliveries; ``Backend.settle`` and the confirmed dead-letter publish
are plain recording functions there. The composed pipeline is driven through ``open_bus`` on the memory
backend, whose broker counters show what was acked.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._codec import encode_envelope
from trio_eventbus._dispatch.dead_letter import DeadLetter
from trio_eventbus._dispatch.decode import Undecodable, decoder, envelope_of, message_of
from trio_eventbus._dispatch.middleware import chain
from trio_eventbus._dispatch.retry import Retry
from trio_eventbus._dispatch.settle import Counters, Settle
from trio_eventbus.backends import Delivery, Disposition

Settled = list[tuple[object, Disposition, float]]


def delivery(
    body: bytes = b"x", *, attempt: int = 1, key: str | None = "k", message_id: str | None = "id-1"
) -> Delivery:
    return Delivery("orders", body, {"h": "v"}, key, message_id, attempt, token=body)


def settle_into(settled: Settled) -> Settle:
    def record(d: Delivery, disposition: Disposition, delay: float) -> None:
        settled.append((d.token, disposition, delay))

    return Settle(record, Counters())


@attrs.define
class Published:
    topic: str
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    message_id: str | None


def dead_letter_into(published: list[Published], settle: Settle, *, dlq: str | None = "orders.dlq") -> DeadLetter:
    async def publish(topic: str, body: bytes, headers: Mapping[str, str], key: str | None, mid: str | None) -> None:
        await trio.lowlevel.checkpoint()
        published.append(Published(topic, body, headers, key, mid))

    return DeadLetter("orders", "g", dlq, publish, settle, 7.0)


def env(n: int = 0) -> teb.Envelope:
    return teb.Envelope(aggregate_id="a-1", event_type="T", event_version=1, payload=b"%d" % n)


# -- settle ------------------------------------------------------------------------------------------------


def test_settle_settles_once_per_call_and_counts_its_reason() -> None:
    settled: Settled = []
    settle = settle_into(settled)
    settle.handled(delivery(b"h"))
    settle.dead_lettered(delivery(b"d"))
    settle.discarded(delivery(b"x"))
    settle.dead_letter_failed(delivery(b"f"), 4.0)
    settle.redeliver(delivery(b"r"), 2.5)
    settle.abandon(delivery(b"a"))
    assert settled == [
        (b"h", Disposition.ACK, 0.0),
        (b"d", Disposition.TERM, 0.0),
        (b"x", Disposition.ACK, 0.0),
        (b"f", Disposition.NAK, 4.0),
        (b"r", Disposition.NAK, 2.5),
        (b"a", Disposition.NAK, 0.0),
    ]
    assert attrs.asdict(settle.counters) == attrs.asdict(
        Counters(handled=1, dead_lettered=1, discarded=1, dead_letter_failed=1)
    )


# -- decode ------------------------------------------------------------------------------------------------


def test_message_of_is_the_message_the_constructor_builds() -> None:
    d = delivery(b"body", attempt=3, key=None, message_id="m")
    built = message_of(d)
    assert built == teb.Message(
        topic="orders", data=b"body", key=None, headers={"h": "v"}, message_id="m", delivery_attempt=3
    )
    assert decoder(envelopes=False) is message_of
    assert [f.name for f in attrs.fields(teb.Message)] == [
        "topic",
        "data",
        "key",
        "headers",
        "message_id",
        "delivery_attempt",
    ]


def test_envelope_of_takes_the_handed_through_envelope_or_decodes_the_body() -> None:
    e = env()
    body, headers = encode_envelope(e)
    handed = Delivery("orders", b"ignored", {}, "a-1", e.event_id, 1, token=None, envelope=e)
    assert envelope_of(handed) is e
    assert envelope_of(Delivery("orders", body, headers, "a-1", e.event_id, 1, token=None)) == e
    assert decoder(envelopes=True) is envelope_of
    with pytest.raises(teb.InvalidEnvelopeError):
        envelope_of(Delivery("orders", b"not json", {}, None, None, 1, token=None))


async def test_undecodable_is_counted_and_dead_lettered_at_once_with_its_attempt_count() -> None:
    settled: Settled = []
    published: list[Published] = []
    settle = settle_into(settled)
    step = Undecodable(dead_letter_into(published, settle), settle.counters)
    d = delivery(b"not json", attempt=2)
    with pytest.raises(teb.InvalidEnvelopeError) as info:
        envelope_of(d)
    await step(d, info.value)
    assert settle.counters.undecodable == 1
    assert [p.headers["X-DLQ-Reason"] for p in published] == ["undecodable"]
    assert published[0].headers["X-DLQ-Attempts"] == "2"
    assert published[0].headers["X-DLQ-Error"].startswith("InvalidEnvelopeError")
    assert settled == [(b"not json", Disposition.TERM, 0.0)]


async def test_undecodable_envelope_never_reaches_the_handler_and_is_dead_lettered() -> None:
    broker = teb.MemoryBroker()
    handled: list[teb.Envelope] = []
    dead: list[teb.Message] = []
    done = trio.Event()
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:

            async def on_order(e: teb.Envelope) -> None:
                handled.append(e)

            async def on_dead(m: teb.Message) -> None:
                dead.append(m)
                done.set()

            await bus.subscribe_envelope("orders", on_order, group="svc")
            await bus.subscribe("orders.dlq", on_dead, group="svc")
            await bus.publish("orders", b"{not an envelope", key="a-1")
            await done.wait()
            stats = bus.statistics()
    assert handled == []
    assert dead[0].data == b"{not an envelope"
    assert dead[0].key == "a-1"
    assert dead[0].headers["X-DLQ-Reason"] == "undecodable"
    assert (stats.undecodable, stats.dead_lettered, stats.handler_errors, stats.retries) == (1, 1, 0, 0)
    assert broker.topic_statistics("orders")["pending[svc]"] == 0  # termed


# -- retry -------------------------------------------------------------------------------------------------


def retry_step(
    policy: teb.RetryPolicy, fails: int, *, redeliver: bool = False
) -> tuple[Retry, Settle, Settled, list[Published], list[tuple[float, int, int]]]:
    """A Retry step whose attempts (2, 3, ...) fail while fewer than ``fails`` attempts have failed in all."""
    settled: Settled = []
    published: list[Published] = []
    settle = settle_into(settled)
    attempts: list[tuple[float, int, int]] = []  # (time, attempt number, Message.delivery_attempt)

    async def handler(message: teb.Message) -> None:
        attempts.append((trio.current_time(), 0, message.delivery_attempt))
        if len(attempts) < fails:
            raise ValueError(f"attempt {len(attempts) + 1}")

    step = Retry(
        policy,
        redeliver=redeliver,
        attempt=chain((), handler, "orders", "g"),
        dead_letter=dead_letter_into(published, settle),
        settle=settle,
        topic="orders",
    )
    return step, settle, settled, published, attempts


async def test_in_place_retry_sleeps_the_backoff_and_acks_the_attempt_that_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = teb.RetryPolicy(max_attempts=5, initial_backoff=1.0, multiplier=3.0, max_backoff=100.0)
    step, settle, settled, published, attempts = retry_step(policy, fails=2)
    d = delivery()
    start = trio.current_time()
    await step(d, message_of(d), ValueError("attempt 1"))  # attempt 1 failed in the pipeline
    assert [(round(t - start, 6), a) for t, _, a in attempts] == [(1.0, 2), (4.0, 3)]  # backoff 1, then 3
    assert settled == [(b"x", Disposition.ACK, 0.0)]
    assert published == []
    assert (settle.counters.handler_errors, settle.counters.retries, settle.counters.handled) == (2, 2, 1)


async def test_in_place_retry_dead_letters_after_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    step, settle, settled, published, attempts = retry_step(teb.RetryPolicy(max_attempts=3), fails=99)
    d = delivery()
    await step(d, message_of(d), ValueError("attempt 1"))
    assert [a for _, _, a in attempts] == [2, 3]
    assert len(published) == 1
    assert published[0].headers["X-DLQ-Attempts"] == "3"
    assert published[0].headers["X-DLQ-Reason"] == "handler-failed"
    assert published[0].headers["X-DLQ-Error"] == "ValueError: attempt 3"  # the last error
    assert settled == [(b"x", Disposition.TERM, 0.0)]
    assert (settle.counters.handler_errors, settle.counters.retries, settle.counters.dead_lettered) == (3, 2, 1)


async def test_redeliver_strategy_naks_with_the_backoff_and_frees_the_lane() -> None:
    policy = teb.RetryPolicy(max_attempts=3, initial_backoff=2.0, multiplier=2.0, strategy="redeliver")
    step, settle, settled, published, attempts = retry_step(policy, fails=99, redeliver=True)
    d = delivery(attempt=2)  # the broker's second delivery failed
    await step(d, message_of(d), ValueError("attempt 2"))
    assert attempts == []  # not attempted again here: the broker redelivers it
    assert settled == [(b"x", Disposition.NAK, 4.0)]  # backoff(2)
    assert (settle.counters.handler_errors, settle.counters.retries) == (1, 1)
    last = delivery(attempt=3)
    await step(last, message_of(last), ValueError("attempt 3"))
    assert settled[-1] == (b"x", Disposition.TERM, 0.0)  # the last attempt: dead-lettered, not redelivered
    assert published[0].headers["X-DLQ-Attempts"] == "3"


async def test_in_place_retry_holds_the_lane_so_the_key_keeps_its_order(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[bytes, int]] = []
    done = trio.Event()
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=5, initial_backoff=1.0))
    with trio.fail_after(600):  # virtual time: a broken retry fails, not hangs
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(m: teb.Message) -> None:
                seen.append((m.data, m.delivery_attempt))
                if m.data == b"bad" and m.delivery_attempt < 3:
                    raise RuntimeError("not yet")
                if m.data == b"next":
                    done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"bad", key="k")
            await bus.publish("t", b"next", key="k")
            await done.wait()
            stats = bus.statistics()
        assert seen == [(b"bad", 1), (b"bad", 2), (b"bad", 3), (b"next", 1)]
        assert (stats.handled, stats.handler_errors, stats.retries, stats.redelivered) == (2, 2, 2, 0)


# -- dead letter -------------------------------------------------------------------------------------------


async def test_dead_letter_terms_the_original_only_once_its_publish_is_confirmed() -> None:
    settled: Settled = []
    settle = settle_into(settled)
    confirm = trio.Event()
    calls: list[Published] = []

    async def publish(topic: str, body: bytes, headers: Mapping[str, str], key: str | None, mid: str | None) -> None:
        calls.append(Published(topic, body, headers, key, mid))
        await confirm.wait()

    step = DeadLetter("orders", "g", "orders.dlq", publish, settle, 7.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(step, delivery(b"body"), KeyError("boom"), 4, "handler-failed")
        await trio.testing.wait_all_tasks_blocked()
        assert len(calls) == 1
        assert settled == []  # not acked while the dead letter is unconfirmed
        confirm.set()
    assert settled == [(b"body", Disposition.TERM, 0.0)]
    sent = calls[0]
    assert (sent.topic, sent.body, sent.key, sent.message_id) == ("orders.dlq", b"body", "k", "id-1.dlq")
    assert dict(sent.headers) == {
        "h": "v",
        "X-DLQ-Topic": "orders",
        "X-DLQ-Group": "g",
        "X-DLQ-Reason": "handler-failed",
        "X-DLQ-Error": "KeyError: 'boom'",
        "X-DLQ-Traceback": "KeyError: 'boom'",  # never raised: no frames
        "X-DLQ-Attempts": "4",
    }
    assert settle.counters.dead_lettered == 1


async def test_dead_letter_publish_failure_naks_for_redelivery() -> None:
    settled: Settled = []
    settle = settle_into(settled)

    async def publish(topic: str, body: bytes, headers: Mapping[str, str], key: str | None, mid: str | None) -> None:
        await trio.lowlevel.checkpoint()
        raise teb.PublishError("broker said no")

    await DeadLetter("orders", "g", "orders.dlq", publish, settle, 7.0)(delivery(), ValueError(), 5, "handler-failed")
    assert settled == [(b"x", Disposition.NAK, 7.0)]  # never acked: it comes back after the delay
    assert (settle.counters.dead_letter_failed, settle.counters.dead_lettered) == (1, 0)


async def test_dead_letter_cancelled_during_its_publish_leaves_the_delivery_to_the_lane() -> None:
    settled: Settled = []
    settle = settle_into(settled)
    published: list[Published] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await dead_letter_into(published, settle)(delivery(), ValueError(), 5, "handler-failed")
    assert scope.cancelled_caught
    assert settled == []  # the lane that held it naks it
    assert published == []


async def test_dead_lettering_disabled_acks_counts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    settled: Settled = []
    settle = settle_into(settled)
    published: list[Published] = []
    await dead_letter_into(published, settle, dlq=None)(delivery(), ValueError("bad"), 2, "handler-failed")
    assert settled == [(b"x", Disposition.ACK, 0.0)]
    assert published == []
    assert settle.counters.discarded == 1
    assert "message id-1" in caplog.text
    assert "discarding it (dead-lettering disabled)" in caplog.text


async def test_failing_handler_is_dead_lettered_and_the_original_termed() -> None:
    broker = teb.MemoryBroker()
    dead: list[teb.Message] = []
    done = trio.Event()
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=2, initial_backoff=0))
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:

            async def always_fails(m: teb.Message) -> None:
                raise LookupError("nope")

            async def on_dead(m: teb.Message) -> None:
                dead.append(m)
                done.set()

            await bus.subscribe("t", always_fails, group="workers")
            await bus.subscribe("t.dlq", on_dead, group="svc")
            await bus.publish("t", b"payload", key="k", message_id="m-1", headers={"a": "b"})
            await done.wait()
            stats = bus.statistics()
    assert [(m.data, m.key, m.message_id) for m in dead] == [(b"payload", "k", "m-1.dlq")]
    assert dead[0].headers["a"] == "b"
    assert dead[0].headers["X-DLQ-Group"] == "workers"
    assert dead[0].headers["X-DLQ-Error"] == "LookupError: nope"
    assert (stats.handler_errors, stats.retries, stats.dead_lettered, stats.dead_letter_failed) == (2, 1, 1, 0)
    assert broker.topic_statistics("t")["pending[workers]"] == 0


# -- the composed pipeline ---------------------------------------------------------------------------------


async def test_a_delivery_is_acked_only_after_its_handler_returned() -> None:
    broker = teb.MemoryBroker()
    entered = trio.Event()
    release = trio.Event()
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:

            async def handler(m: teb.Message) -> None:
                entered.set()
                await release.wait()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"x", key="k")
            await entered.wait()
            assert broker.topic_statistics("t")["pending[svc]"] == 1
            assert bus.statistics().in_flight == 1
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert broker.topic_statistics("t")["pending[svc]"] == 0
            stats = bus.statistics()
    assert (stats.handled, stats.in_flight) == (1, 0)


async def test_close_deadline_naks_the_held_and_the_queued_deliveries(autojump_clock: trio.testing.MockClock) -> None:
    broker = teb.MemoryBroker()
    started = trio.Event()
    with trio.fail_after(600):  # virtual time: a broken retry fails, not hangs
        async with teb.open_bus(teb.MemoryConfig(broker=broker), options=teb.BusOptions(close_timeout=2)) as bus:

            async def stuck(m: teb.Message) -> None:
                started.set()
                await trio.sleep_forever()

            await bus.subscribe("t", stuck, group="svc")
            for n in range(3):
                await bus.publish("t", b"%d" % n, key="k", confirm=True)
            await started.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert bus.statistics().lane_depth_max == 2  # one held, two queued behind it
        assert broker.topic_statistics("t")["pending[svc]"] == 3
        seen: list[tuple[bytes, int]] = []
        done = trio.Event()
        async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:

            async def handler(m: teb.Message) -> None:
                seen.append((m.data, m.delivery_attempt))
                if len(seen) == 3:
                    done.set()

            await bus.subscribe("t", handler, group="svc")
            await done.wait()
            stats = bus.statistics()
        assert seen == [(b"0", 2), (b"1", 2), (b"2", 2)]  # redelivered, in order
        assert (stats.redelivered, stats.handled) == (3, 3)
