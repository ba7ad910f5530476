"""Per-subscription policies (issue 9, item 2): ``subscribe*(..., retry=, dead_letter=)`` override the bus's
``BusOptions.retry`` / ``BusOptions.dead_letter``; non-retryable failures are dead-lettered at once and free
the lane; the backoff never overflows. All on the memory backend, in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_eventbus as teb


async def collect(bus: teb.EventBus, topic: str, into: list[teb.Message], done: trio.Event, n: int) -> None:
    async def on_dead(m: teb.Message) -> None:
        into.append(m)
        if len(into) == n:
            done.set()

    await bus.subscribe(topic, on_dead, group="ops")


# The row: "different retry needs per topic -> one RetryPolicy per bus: several buses needed".


async def test_two_subscriptions_on_one_bus_retry_by_their_own_policies(autojump_clock: trio.testing.MockClock) -> None:
    attempts: dict[str, list[float]] = {"payments": [], "emails": []}
    dead: list[teb.Message] = []
    done = trio.Event()
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=5, initial_backoff=1.0))
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def payments(m: teb.Message) -> None:
                attempts["payments"].append(trio.current_time())
                raise ConnectionError("gateway down")

            async def emails(m: teb.Message) -> None:
                attempts["emails"].append(trio.current_time())
                raise ConnectionError("smtp down")

            # payments: patient (the bus's default would be 5 attempts, 1 s doubling); emails: give up fast
            await bus.subscribe(
                "payments",
                payments,
                group="svc",
                retry=teb.RetryPolicy(max_attempts=8, initial_backoff=0.5, multiplier=1.0),
            )
            await bus.subscribe("emails", emails, group="svc", retry=teb.RetryPolicy(max_attempts=2, initial_backoff=0))
            await collect(bus, "payments.dlq", dead, done, 2)
            await collect(bus, "emails.dlq", dead, done, 2)
            start = trio.current_time()
            await bus.publish("payments", b"p", key="p-1")
            await bus.publish("emails", b"e", key="e-1")
            await done.wait()
    pay = [round(t - start, 3) for t in attempts["payments"]]
    mail = [round(t - start, 3) for t in attempts["emails"]]
    print("payments attempts at", pay, "emails attempts at", mail)
    assert pay == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # 8 attempts, a constant 0.5 s apart
    assert mail == [0.0, 0.0]  # 2 attempts, no backoff
    assert sorted(m.headers["X-DLQ-Attempts"] for m in dead) == ["2", "8"]


async def test_a_subscription_can_have_its_own_dead_letter_suffix_or_none() -> None:
    dead: list[teb.Message] = []
    done = trio.Event()
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=1))
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def fails(m: teb.Message) -> None:
                raise ValueError("no")

            await bus.subscribe("a", fails, group="svc", dead_letter=teb.DeadLetterPolicy(suffix=".poison"))
            await bus.subscribe("b", fails, group="svc", dead_letter=teb.DeadLetterPolicy(suffix=None))
            await collect(bus, "a.poison", dead, done, 1)
            await bus.publish("b", b"b", key="k")
            await bus.publish("a", b"a", key="k")
            await done.wait()
            stats = bus.statistics()
    assert [m.data for m in dead] == [b"a"]
    assert (stats.dead_lettered, stats.discarded) == (1, 1)


# The issue's row: "a validation error that will never succeed -> retried max_attempts times in place, holding
# its lane (and every key hashed to it); no way to say 'don't retry'".


@pytest.mark.parametrize("how", ["NonRetryableError", "RetryPolicy.non_retryable"])
async def test_a_non_retryable_failure_is_dead_lettered_at_once_and_frees_the_lane(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    class ValidationError(ValueError):
        pass

    handled: list[tuple[bytes, float]] = []
    dead: list[teb.Message] = []
    done, good = trio.Event(), trio.Event()
    # one lane: every key shares it, so a held lane would hold the next message too
    retry = teb.RetryPolicy(max_attempts=10, initial_backoff=30.0, non_retryable=(ValidationError,))
    options = teb.BusOptions(lanes=1, retry=retry)
    calls = 0
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(m: teb.Message) -> None:
                nonlocal calls
                calls += 1
                if m.data == b"bad":
                    try:
                        raise ValidationError("total must be >= 0")
                    except ValidationError as exc:
                        if how == "NonRetryableError":
                            raise teb.NonRetryableError("bad total") from exc
                        raise
                handled.append((m.data, trio.current_time() - start))
                good.set()

            await bus.subscribe("orders", handler, group="svc")
            await collect(bus, "orders.dlq", dead, done, 1)
            start = trio.current_time()
            await bus.publish("orders", b"bad", key="order-1")
            await bus.publish("orders", b"good", key="order-2")
            await done.wait()
            await good.wait()
            stats = bus.statistics()
    print("calls", calls, "handled", handled, "dead", [m.headers["X-DLQ-Reason"] for m in dead])
    assert calls == 2  # one attempt of the bad one, one of the good one
    assert handled == [(b"good", 0.0)]  # no backoff sleep held the lane
    (letter,) = dead
    assert letter.headers["X-DLQ-Reason"] == "non-retryable"
    assert letter.headers["X-DLQ-Attempts"] == "1"
    expected = "NonRetryableError: bad total" if how == "NonRetryableError" else "ValidationError: total must be >= 0"
    assert letter.headers["X-DLQ-Error"] == expected
    assert (stats.retries, stats.dead_lettered, stats.handler_errors) == (0, 1, 1)


def test_non_retryable_error_is_a_handler_error() -> None:
    assert issubclass(teb.NonRetryableError, teb.HandlerError)
    assert issubclass(teb.NonRetryableError, teb.EventBusError)


# RetryPolicy.backoff with a huge multiplier: float ** overflowed (an untyped OverflowError that killed the bus).


def test_backoff_is_capped_however_large_the_multiplier() -> None:
    policy = teb.RetryPolicy(initial_backoff=0.1, multiplier=1e200, max_backoff=7.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 100)] == [0.1, 7.0, 7.0, 7.0, 7.0]


async def test_a_huge_multiplier_does_not_kill_the_bus(autojump_clock: trio.testing.MockClock) -> None:
    dead: list[teb.Message] = []
    done = trio.Event()
    retry = teb.RetryPolicy(max_attempts=4, initial_backoff=0.1, multiplier=1e200, max_backoff=5.0)
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(retry=retry)) as bus:

            async def fails(m: teb.Message) -> None:
                raise ValueError("again")

            await bus.subscribe("t", fails, group="svc")
            await collect(bus, "t.dlq", dead, done, 1)
            start = trio.current_time()
            await bus.publish("t", b"x", key="k")
            await done.wait()
            elapsed = trio.current_time() - start
    print("dead-lettered after", elapsed, "virtual seconds")
    assert dead[0].headers["X-DLQ-Attempts"] == "4"
    assert elapsed == pytest.approx(0.1 + 5.0 + 5.0)
