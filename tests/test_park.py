"""Parking a key after a dead letter (issue 9, item 2): ``teb.DeadLetterPolicy(after="park")``.

The issue's row: "v2 of an order dead-lettered -> v3 of the same order runs anyway; no way to park the key".
Memory backend; every figure printed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._dispatch.dead_letter import DeadLetter
from trio_eventbus._dispatch.park import Park
from trio_eventbus._dispatch.settle import Counters, Settle
from trio_eventbus.backends import Delivery, Disposition

ONE_ATTEMPT = teb.RetryPolicy(max_attempts=1)


class Orders:
    """The user's handler: version 2 of order-1 fails; the other orders are slow but fine."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.dead: list[teb.Message] = []
        self.changed = trio.Condition()

    async def handler(self, m: teb.Message) -> None:
        if (m.key, m.data) == ("order-1", b"v2"):
            raise ValueError("bad total")
        await trio.sleep(1)  # virtual time: other orders are in flight while order-1 is parked
        assert m.key is not None
        self.handled.append((m.key, m.data.decode()))
        async with self.changed:
            self.changed.notify_all()

    async def on_dead(self, m: teb.Message) -> None:
        self.dead.append(m)
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, handled: int, dead: int) -> None:
        async with self.changed:
            while len(self.handled) < handled or len(self.dead) < dead:
                await self.changed.wait()


async def test_a_parked_key_sends_its_later_messages_to_the_dlq_while_other_keys_flow(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_eventbus.dispatch")
    app = Orders()
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="billing")) as bus:
            await bus.subscribe(
                "orders", app.handler, retry=ONE_ATTEMPT, dead_letter=teb.DeadLetterPolicy(after="park")
            )
            await bus.subscribe("orders.dlq", app.on_dead, group="ops")
            for version in ("v1", "v2", "v3", "v4"):
                await bus.publish("orders", version.encode(), key="order-1")
                await bus.publish("orders", version.encode(), key="order-2")
            await app.wait_for(handled=5, dead=3)  # order-1 v1, order-2 v1-v4; order-1 v2-v4 dead
            parked = bus.parked_keys("orders")
            stats = bus.statistics()
            assert bus.release_key("orders", "order-1")
            assert not bus.release_key("orders", "order-1")  # not parked any more
            await bus.publish("orders", b"v5", key="order-1")
            await app.wait_for(handled=6, dead=3)
            after = bus.statistics()
    reasons = [(m.data.decode(), m.headers["X-DLQ-Reason"]) for m in app.dead]
    print("handled", app.handled, "dead", reasons, "parked", parked)
    print("stats: dead_lettered", stats.dead_lettered, "parked", stats.parked, "parked_keys", stats.parked_keys)
    assert [v for k, v in app.handled if k == "order-1"] == ["v1", "v5"]  # v3, v4 never ran; v5 after release
    assert [v for k, v in app.handled if k == "order-2"] == ["v1", "v2", "v3", "v4"]  # never held up
    assert reasons == [("v2", "handler-failed"), ("v3", "parked"), ("v4", "parked")]  # in order
    assert all(m.key == "order-1" and m.headers["X-DLQ-Group"] == "billing" for m in app.dead)
    assert "X-DLQ-Error" not in app.dead[1].headers
    assert app.dead[1].headers["X-DLQ-Attempts"] == "0"
    assert parked == frozenset({"order-1"})
    assert (stats.dead_lettered, stats.parked, stats.parked_keys) == (3, 2, 1)
    assert (after.parked_keys, after.handled) == (0, 5 + 1 + 3)  # + the three dead letters handled by ops
    assert bus.statistics().backend.unsettled == 0
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if "order-1" in r.getMessage()]
    assert any(level == "WARNING" and "parked key 'order-1'" in text and "billing" in text for level, text in messages)
    assert any(level == "INFO" and "released key 'order-1'" in text for level, text in messages)


async def test_by_default_the_key_continues_after_a_dead_letter(autojump_clock: trio.testing.MockClock) -> None:
    app = Orders()
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig()) as bus:
            await bus.subscribe("orders", app.handler, group="billing", retry=ONE_ATTEMPT)
            await bus.subscribe("orders.dlq", app.on_dead, group="ops")
            for version in ("v1", "v2", "v3"):
                await bus.publish("orders", version.encode(), key="order-1")
            await app.wait_for(handled=2, dead=1)
            assert bus.parked_keys("orders", group="billing") == frozenset()
    print("handled", app.handled, "dead", [m.data for m in app.dead])
    assert app.handled == [("order-1", "v1"), ("order-1", "v3")]  # as before: v3 runs


async def test_the_parked_set_is_bounded(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = Orders()

    async def always_fails_on_v2(m: teb.Message) -> None:
        if m.data == b"v2":
            raise ValueError("bad")
        await app.handler(m)

    policy = teb.DeadLetterPolicy(after="park", max_parked_keys=2)
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig()) as bus:
            await bus.subscribe("orders", always_fails_on_v2, group="billing", retry=ONE_ATTEMPT, dead_letter=policy)
            await bus.subscribe("orders.dlq", app.on_dead, group="ops")
            for key in ("a", "b", "c"):
                await bus.publish("orders", b"v2", key=key)
            await app.wait_for(handled=0, dead=3)
            for key in ("a", "b", "c"):
                await bus.publish("orders", b"v3", key=key)
            await app.wait_for(handled=1, dead=5)
            parked = bus.parked_keys("orders", group="billing")
            stats = bus.statistics()
    print("parked", sorted(parked), "handled", app.handled, "dead", [(m.key, m.data) for m in app.dead])
    assert len(parked) == 2  # the first two keys that failed (lanes run concurrently: any two)
    (unparked,) = {"a", "b", "c"} - parked
    assert app.handled == [(unparked, "v3")]  # it could not be parked: it flows, as with "continue"
    assert stats.parked_keys == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "cannot park" in r.getMessage()]
    assert len(errors) == 1
    assert f"cannot park key {unparked!r}" in errors[0]


def test_parking_needs_a_dead_letter_topic() -> None:
    with pytest.raises(teb.InvalidOptionError) as info:
        teb.DeadLetterPolicy(suffix=None, after="park")
    assert info.value.field == "after"


async def test_release_and_parked_keys_of_unknown_or_non_parking_subscriptions() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:

        async def handler(m: teb.Message) -> None:
            pass

        await bus.subscribe("t", handler, group="g")
        assert bus.parked_keys("t", group="g") == frozenset()
        assert bus.parked_keys("other", group="g") == frozenset()
        assert not bus.release_key("t", "k", group="g")
        with pytest.raises(teb.InvalidOptionError):
            bus.parked_keys("t")  # no group and no service: which subscription?


async def test_a_parked_message_whose_dead_letter_publish_fails_is_nakd_and_not_counted_parked() -> None:
    counters = Counters()
    settled: list[tuple[Disposition, float]] = []
    settle = Settle(lambda d, disposition, delay: settled.append((disposition, delay)), counters)
    park = Park("orders", "g", 10, counters)
    assert park.park("k")

    async def publish(topic: str, body: bytes, headers: Mapping[str, str], key: str | None, mid: str | None) -> None:
        await trio.lowlevel.checkpoint()
        raise teb.PublishError("broker said no")

    step = DeadLetter("orders", "g", "orders.dlq", publish, settle, 7.0, park=park)
    await step.divert(Delivery("orders", b"x", {}, "k", "m-1", 1, token=None))
    assert settled == [(Disposition.NAK, 7.0)]  # comes back later, never acked unstored
    assert (counters.parked, counters.dead_letter_failed, counters.parked_keys) == (0, 1, 1)
