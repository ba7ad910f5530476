"""Publish results without traps (issue 9, item 3): each test reproduces what a user did.

- ``async for`` over ``publish_results()`` inside the ``open_bus`` block: a typed error, not a hang;
- ``BusOptions.on_publish_results``: a bus-owned task hands batches of results to an async callback;
- a results channel nobody reads: one WARNING when it fills, one line for what is dropped at close;
- an outer deadline or cancellation bounds the close (hard stop), also during the graceful close;
- raw publishes with a ``message_id`` have results; dead letters have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._abc import HARD_STOP_GRACE
from trio_eventbus.testing import collect
from trio_eventbus.testing.fake import FakeBackend, FakeConfig

PUBLISH_LOGGER = "trio_eventbus.publish"


def env(n: int, aggregate: str = "a") -> teb.Envelope:
    return teb.Envelope(aggregate_id=aggregate, event_type="T", event_version=n + 1, payload=b"%d" % n)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == PUBLISH_LOGGER and r.levelno == level]


async def publish_until_blocked(bus: teb.EventBus, topic: str) -> int:
    """The hot loop of the README until the window refuses: how many were accepted."""
    await bus.configure_topic(topic, teb.TopicOptions())
    accepted = 0
    while True:
        try:
            bus.publish_envelope_nowait(topic, env(accepted))
        except trio.WouldBlock:
            await trio.testing.wait_all_tasks_blocked()  # let the bus hand over and settle what it can
            try:
                bus.publish_envelope_nowait(topic, env(accepted))
            except trio.WouldBlock:
                return accepted
        accepted += 1


# -- reading results inside the block ------------------------------------------------------------------------


async def test_async_for_in_a_nursery_inside_the_block_raises_instead_of_hanging() -> None:
    """The ordinary Trio shape: a reader task in a nursery opened inside the bus block. It used to hang forever
    (the channel ends only when the bus closes, which waits for this nursery); now the loop raises at once."""
    got: list[teb.PublishResult] = []

    async def service() -> None:
        async with teb.open_bus(teb.MemoryConfig()) as bus, trio.open_nursery() as nursery:
            results = bus.publish_results()

            async def read() -> None:
                async for result in results:
                    got.append(result)

            nursery.start_soon(read)
            await bus.publish_envelope("t", env(0))

    with trio.fail_after(5), pytest.raises(teb.ResultsReaderError, match="outside the open_bus block"):
        await service()
    assert got == []


async def test_async_for_in_the_block_task_and_in_nested_nurseries_raises() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        results = bus.publish_results()
        with pytest.raises(teb.ResultsReaderError):
            async for _ in results:
                pass
        errors: list[BaseException] = []

        async def inner_reader() -> None:
            try:
                async for _ in results:
                    pass
            except teb.ResultsReaderError as exc:
                errors.append(exc)

        async def opens_its_own_nursery() -> None:
            async with trio.open_nursery() as deeper:
                deeper.start_soon(inner_reader)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(opens_its_own_nursery)
        assert len(errors) == 1
        assert isinstance(errors[0], teb.EventBusError)


async def test_receive_inside_the_block_and_async_for_outside_it_work() -> None:
    outside: list[teb.PublishResult] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery, teb.open_bus(teb.MemoryConfig()) as bus:
            results = bus.publish_results()
            nursery.start_soon(collect, results, outside)  # a nursery opened before the bus: allowed
            await trio.testing.wait_all_tasks_blocked()
            await bus.publish_envelope("t", env(0))
            await bus.flush()
        assert len(outside) == 1
        async with teb.open_bus(teb.MemoryConfig()) as bus:
            results = bus.publish_results()
            sent = [env(i) for i in range(3)]
            for e in sent:
                await bus.publish_envelope("t", e)
            # reading a known number of results in the block is a legitimate test pattern
            assert [(await results.receive()).event_id for _ in sent] == [e.event_id for e in sent]
            await bus.publish_envelope("t", env(9))
            await bus.flush()
            assert results.receive_nowait().success
        async for _ in results:  # after the block the loop is allowed (and ends at once)
            pytest.fail("the channel ended with the bus")


# -- the on_publish_results helper ---------------------------------------------------------------------------


async def test_on_publish_results_gets_batches_including_the_close_time_failures() -> None:
    """The outbox case without a reader task: every envelope's result reaches the callback in a batch of at
    most ``results_buffer``, from a task of the bus; messages the broker never answered reach it as failures
    after the block (close-time results)."""
    backend = FakeBackend()
    batches: list[list[teb.PublishResult]] = []
    tasks: set[trio.lowlevel.Task] = set()

    async def on_results(batch: Sequence[teb.PublishResult]) -> None:
        tasks.add(trio.lowlevel.current_task())
        batches.append(list(batch))
        await trio.lowlevel.checkpoint()

    options = teb.BusOptions(on_publish_results=on_results, results_buffer=8, close_timeout=0)
    async with teb.open_bus(FakeConfig(backend), options=options) as bus:
        block_task = trio.lowlevel.current_task()
        sent = [env(i) for i in range(30)]
        for e in sent[:25]:
            await bus.publish_envelope("t", e)
        await backend.wait_sent(25)
        await backend.release([m.seq for m in backend.sent[:20]])
        await trio.testing.wait_all_tasks_blocked()
        for e in sent[25:]:
            await bus.publish_envelope("t", e)
        await backend.wait_sent(30)
    results = [r for batch in batches for r in batch]
    print(f"batches {[len(b) for b in batches]}, results {len(results)}")
    assert all(0 < len(batch) <= 8 for batch in batches)
    assert sorted(r.event_id for r in results) == sorted(e.event_id for e in sent)  # exactly one each
    assert sum(r.success for r in results) == 20
    assert all(isinstance(r.error, teb.PublishError) for r in results if not r.success)
    assert block_task not in tasks
    assert len(tasks) == 1
    assert bus.statistics().results_dropped == 0


async def test_flush_waits_for_the_callback_and_its_errors_are_logged_counted_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[list[str]] = []
    release = trio.Event()

    async def on_results(batch: Sequence[teb.PublishResult]) -> None:
        calls.append([r.event_id for r in batch])
        await release.wait()
        raise RuntimeError("outbox table is locked")

    options = teb.BusOptions(on_publish_results=on_results)
    async with trio.open_nursery() as nursery, teb.open_bus(teb.MemoryConfig(), options=options) as bus:
        first = env(0)
        await bus.publish_envelope("t", first)
        flushed = trio.Event()

        async def flush() -> None:
            await bus.flush()
            flushed.set()

        nursery.start_soon(flush)
        await trio.testing.wait_all_tasks_blocked()
        assert calls == [[first.event_id]]
        assert not flushed.is_set()  # the broker acked, but the callback has not finished its batch
        release.set()
        await flushed.wait()
        await bus.publish_envelope("t", env(1))
        await bus.flush()
        stats = bus.statistics()
    assert len(calls) == 2  # the failed batch was not retried
    assert stats.callback_errors == 2
    errors = records(caplog, logging.ERROR)
    assert len(errors) == 2
    assert all(r.exc_info is not None and "outbox table is locked" in str(r.exc_info[1]) for r in errors)


async def test_a_slow_callback_is_backpressure_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """While the callback runs, results queue (up to results_buffer), then the window stops freeing slots and
    publishing waits; one WARNING says so."""
    release = trio.Event()
    taken: list[int] = []

    async def on_results(batch: Sequence[teb.PublishResult]) -> None:
        taken.append(len(batch))
        await release.wait()

    options = teb.BusOptions(on_publish_results=on_results, results_buffer=4, max_pending_publishes=8)
    async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
        accepted = await publish_until_blocked(bus, "t")
        # a batch of 4 in the running callback (all that was ready, at most results_buffer), 4 queued, and the
        # window's 8 (one of them a result waiting for room in the queue)
        print(f"accepted before publishing waits: {accepted}")
        assert accepted == 4 + 4 + 8
        async with trio.open_nursery() as nursery:
            returned = trio.Event()

            async def publish() -> None:
                await bus.publish_envelope("t", env(99))
                returned.set()

            nursery.start_soon(publish)
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()  # the awaited form waits too
            release.set()
        warnings = records(caplog, logging.WARNING)
        assert len(warnings) == 1
        assert "on_publish_results is behind: 4 results queued" in warnings[0].getMessage()
        assert "publishing now waits" in warnings[0].getMessage()
        await bus.flush()
    assert sum(taken) == accepted + 1
    assert len(records(caplog, logging.WARNING)) == 1


async def test_on_publish_results_must_be_async() -> None:
    def sync_callback(batch: Sequence[teb.PublishResult]) -> None:
        pass

    with pytest.raises(teb.InvalidOptionError) as info:
        teb.BusOptions(on_publish_results=sync_callback)  # type: ignore[arg-type]
    assert info.value.field == "on_publish_results"


async def test_hard_stop_cancels_the_callback_and_counts_what_it_did_not_take() -> None:
    entered = trio.Event()
    taken: list[teb.PublishResult] = []

    async def on_results(batch: Sequence[teb.PublishResult]) -> None:
        taken.extend(batch)
        entered.set()
        await trio.sleep_forever()

    options = teb.BusOptions(on_publish_results=on_results, results_buffer=2)
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
                for i in range(4):
                    await bus.publish_envelope("t", env(i))
                await entered.wait()
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
                await trio.sleep_forever()
    stats = bus.statistics()
    print(f"published {stats.published}, taken by the callback {len(taken)}, dropped {stats.results_dropped}")
    assert stats.published == 4
    assert len(taken) in (1, 2)  # the first batch: whatever was ready (at most results_buffer)
    assert stats.results_dropped == 4 - len(taken)  # the rest is counted, none silently lost


# -- traps: a channel nobody reads ---------------------------------------------------------------------------


async def test_unread_channel_warns_once_and_close_drops_are_one_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The user's code: ``publish_results()`` called and never read, publishing in a hot loop. Publishing stops
    after window + buffer messages (backpressure); one WARNING names publish_results(); at close the results
    that cannot be delivered are one ERROR line with the count (it was one line per result)."""
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        bus.publish_results()
        accepted = await publish_until_blocked(bus, "t")
        warnings = records(caplog, logging.WARNING)
        print(f"accepted {accepted}, warnings {len(warnings)}")
        assert accepted == 20_000  # 10,000 buffered + the window's 10,000 (one a result waiting for room)
        assert len(warnings) == 1
        text = warnings[0].getMessage()
        assert "publish_results() holds 10000 unread results" in text
        assert "publishing now waits" in text
    stats = bus.statistics()
    errors = records(caplog, logging.ERROR)
    print(f"dropped {stats.results_dropped}, error lines {len(errors)}")
    assert stats.results_dropped == 10_000
    assert len(errors) == 1
    assert "10000 publish results dropped" in errors[0].getMessage()


async def test_a_closed_channel_logs_once_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        results = bus.publish_results()
        await results.aclose()
        for i in range(50):
            await bus.publish_envelope("t", env(i))
        await bus.flush()
        assert bus.statistics().results_dropped == 50
    lines = [r for r in caplog.records if r.name == PUBLISH_LOGGER]
    assert len(lines) == 2  # when the first result was dropped, and the count at close
    assert "50 publish results dropped" in lines[1].getMessage()


# -- an outer deadline or cancellation bounds the close --------------------------------------------------------


async def test_outer_deadline_bounds_the_close_with_unread_results(autojump_clock: trio.testing.MockClock) -> None:
    """``with trio.move_on_after(3): async with open_bus(...)`` with unread results: the graceful close used to
    wait for close_timeout (10 s); the outer deadline now ends it (hard stop)."""
    start = trio.current_time()
    with trio.move_on_after(3) as outer:
        async with teb.open_bus(teb.MemoryConfig()) as bus:
            bus.publish_results()
            await publish_until_blocked(bus, "t")
    elapsed = trio.current_time() - start
    stats = bus.statistics()
    print(f"left after {elapsed:.2f} s (virtual), dropped {stats.results_dropped}")
    assert outer.cancelled_caught
    assert 3 <= elapsed <= 3 + HARD_STOP_GRACE
    assert stats.pending_publishes == 0


async def test_outer_deadline_bounds_the_close_on_the_real_clock() -> None:
    options = teb.BusOptions(max_pending_publishes=200, results_buffer=100)  # quick to fill on a busy machine
    start = time.perf_counter()
    with trio.move_on_after(1.5) as outer:
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:
            bus.publish_results()
            await publish_until_blocked(bus, "t")
    elapsed = time.perf_counter() - start
    print(f"left after {elapsed:.2f} s; close_timeout {options.close_timeout} s")
    assert outer.cancelled_caught
    assert elapsed < 1.5 + HARD_STOP_GRACE < options.close_timeout


async def test_cancelling_during_the_graceful_close_is_a_hard_stop(autojump_clock: trio.testing.MockClock) -> None:
    """What a second Ctrl-C does: a graceful close is waiting for a slow handler (close_timeout 60 s); a cancel
    of a scope around the bus turns it into a hard stop at once: the handler is cancelled, its message
    nak'ed (redelivered later), not acked."""
    broker = teb.MemoryBroker()
    entered = trio.Event()
    cancelled: list[bool] = []

    async def slow(message: teb.Message) -> None:
        entered.set()
        try:
            await trio.sleep(1_000)
        except trio.Cancelled:
            cancelled.append(True)
            raise

    options = teb.BusOptions(close_timeout=60)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            async with teb.open_bus(teb.MemoryConfig(broker=broker), options=options) as bus:
                await bus.subscribe("t", slow, group="g")
                await bus.publish("t", b"x")
                await entered.wait()

                async def second_signal() -> None:
                    await trio.sleep(1)  # (virtual time) while the graceful close waits for the handler
                    scope.cancel()

                nursery.start_soon(second_signal)
                start = trio.current_time()
    elapsed = trio.current_time() - start
    print(f"left {elapsed:.2f} s after the block (virtual)")
    assert 1 <= elapsed <= 1 + HARD_STOP_GRACE
    assert cancelled == [True]
    assert bus.statistics().handled == 0
    assert broker.topic_statistics("t")["pending[g]"] == 1  # nak'ed: redelivered to the next subscriber


# -- which publishes have results ----------------------------------------------------------------------------


async def test_raw_publish_with_message_id_has_a_result_dead_letters_do_not() -> None:
    got: list[teb.PublishResult] = []
    failed = trio.Event()

    async def fails(message: teb.Message) -> None:
        failed.set()
        raise ValueError("never handled")

    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=1))
    async with trio.open_nursery() as nursery, teb.open_bus(teb.MemoryConfig(), options=options) as bus:
        nursery.start_soon(collect, bus.publish_results(), got)
        await bus.subscribe("t", fails, group="g")
        await bus.publish("t", b"raw", key="order-7", message_id="m-1")
        await bus.publish("t", b"no id", key="order-7")
        await failed.wait()
        with trio.fail_after(5):
            while bus.statistics().dead_lettered < 2:
                await trio.testing.wait_all_tasks_blocked()
        await bus.flush()
    assert [(r.event_id, r.topic, r.aggregate_id, r.event_type, r.success) for r in got] == [
        ("m-1", "t", "order-7", None, True)
    ]
