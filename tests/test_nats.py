"""The NATS JetStream backend against a real nats-server (the conformance suite runs it too).

Every test has a ``trio.fail_after``, uses its own topics, and waits on events rather than sleeping. Server-side
facts (stream configs, consumer state, raw stored messages) are read with a plain nats-py client on a private
asyncio loop in a worker thread.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections import defaultdict
from typing import Any

import pytest
import trio
from nats.js.errors import NotFoundError
from nats_helpers import bridge_threads, config, on_server, stream_of, topic_name

import trio_eventbus as teb
from trio_eventbus.backends._bridge.bridge import application_loop
from trio_eventbus.backends.nats.config import NatsConfig
from trio_eventbus.testing import all_tasks
from trio_eventbus.testing.conformance import envelope, seq_of
from trio_eventbus.testing.leaks import watch_task_leaks
from trio_eventbus.testing.servers import NatsServer

pytestmark = pytest.mark.nats


async def _stream_for(subject: str, js: Any) -> str | None:
    try:
        name: str = await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        return None
    return name


class Seen:
    """Records handled sequence numbers; ``wait(n)`` returns once ``n`` distinct ones were handled."""

    def __init__(self) -> None:
        self.all: list[int] = []
        self.distinct: set[int] = set()
        self._waiters: list[tuple[int, trio.Event]] = []

    def add(self, n: int) -> None:
        self.all.append(n)
        self.distinct.add(n)
        for target, event in self._waiters:
            if len(self.distinct) >= target:
                event.set()

    async def wait(self, target: int) -> None:
        event = trio.Event()
        self._waiters.append((target, event))
        if len(self.distinct) >= target:
            event.set()
        await event.wait()


# ------------------------------------------------------------------------------------------ dedupe, order


async def test_same_event_id_published_twice_is_handled_once(nats_url: str) -> None:
    topic = topic_name("dedupe")
    handled: list[str] = []
    sentinel = trio.Event()
    dup = envelope("agg", 1)
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url)) as bus, teb.open_bus(config(nats_url)) as other:
            results = bus.publish_results()

            async def handler(env: teb.Envelope) -> None:
                handled.append(env.event_id)
                if env.event_type == "Sentinel":
                    sentinel.set()

            await bus.subscribe_envelope(topic, handler, group="svc")
            await bus.publish_envelope(topic, dup)
            await bus.publish_envelope(topic, dup, confirm=True)
            await other.publish_envelope(topic, dup, confirm=True)  # another bus, same broker window
            await bus.publish(topic, b"raw", key="agg", message_id="raw-1")
            await bus.publish(topic, b"raw", key="agg", message_id="raw-1", confirm=True)
            last = teb.Envelope(aggregate_id="agg", event_type="Sentinel", event_version=1, payload=b"{}")
            await bus.publish_envelope(topic, last)
            await sentinel.wait()  # same aggregate: handled after everything published before it
            assert [(await results.receive()).success for _ in range(3)] == [True, True, True]
        info = await on_server(nats_url, lambda js: js.stream_info(stream_of(topic)))
    assert handled == [dup.event_id, last.event_id]  # the raw message is not an envelope: dead-lettered
    assert info.state.messages == 3  # dup, raw-1, sentinel


async def test_hundred_aggregates_in_order_across_lanes_with_lz4(nats_url: str) -> None:
    topic = topic_name("order")
    last: dict[str, int] = {}
    violations: list[tuple[str, int, int]] = []
    seen = Seen()
    with trio.fail_after(90):
        options = teb.BusOptions(lanes=16, lane_buffer=16)
        async with teb.open_bus(config(nats_url, compression="lz4", compression_min_bytes=1), options=options) as bus:

            async def handler(env: teb.Envelope) -> None:
                n = seq_of(env)
                if last.get(env.aggregate_id, -1) != n - 1:
                    violations.append((env.aggregate_id, last.get(env.aggregate_id, -1), n))
                last[env.aggregate_id] = n
                if n % 2:
                    await trio.lowlevel.checkpoint()
                seen.add(n * 1000 + int(env.aggregate_id[4:]))

            await bus.subscribe_envelope(topic, handler, group="svc")

            async def producer(lo: int, hi: int) -> None:  # two publishers: each owns 50 aggregates
                for n in range(100):
                    for a in range(lo, hi):
                        await bus.publish_envelope(topic, envelope(f"agg-{a}", n))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer, 0, 50)
                nursery.start_soon(producer, 50, 100)
            await seen.wait(100 * 100)
            stats = bus.statistics()
    assert violations == []
    assert last == {f"agg-{a}": 99 for a in range(100)}
    assert stats.backend.acks == 100 * 100
    assert stats.redelivered == 0


# --------------------------------------------------------------------------------- retries, dead letters


async def test_redeliver_strategy_naks_with_the_backoff_delay(nats_url: str) -> None:
    topic = topic_name("redeliver")
    times: dict[bytes, list[tuple[int, float]]] = defaultdict(list)
    order: list[bytes] = []
    done = trio.Event()
    retry = teb.RetryPolicy(max_attempts=4, initial_backoff=0.3, multiplier=2.0, strategy="redeliver")
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url), options=teb.BusOptions(retry=retry)) as bus:

            async def handler(msg: teb.Message) -> None:
                times[msg.data].append((msg.delivery_attempt, trio.current_time()))
                order.append(msg.data)
                if msg.data == b"flaky" and msg.delivery_attempt < 3:
                    raise RuntimeError("try again later")
                if msg.data == b"flaky":
                    done.set()

            await bus.subscribe(topic, handler, group="svc")
            await bus.publish(topic, b"flaky", key="k")
            await bus.publish(topic, b"next", key="k")
            await done.wait()
            stats = bus.statistics()
    flaky = times[b"flaky"]
    assert [a for a, _ in flaky] == [1, 2, 3]  # JetStream's delivery count
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(flaky)]
    assert 0.27 <= gaps[0] < 3.0, gaps  # backoff(1) = 0.3 s
    assert 0.55 <= gaps[1] < 3.0, gaps  # backoff(2) = 0.6 s
    assert order.index(b"next") < 2  # the nak freed the lane: "next" did not wait for the retries
    assert (stats.retries, stats.redelivered, stats.dead_lettered) == (2, 2, 0)
    assert stats.backend.naks == 2


async def test_dead_letter_after_the_last_attempt(nats_url: str) -> None:
    topic = topic_name("dlq")
    dead: list[teb.Message] = []
    got_dead = trio.Event()
    retry = teb.RetryPolicy(max_attempts=3, initial_backoff=0.01, strategy="redeliver")
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url), options=teb.BusOptions(retry=retry)) as bus:

            async def handler(env: teb.Envelope) -> None:
                raise ValueError(f"cannot handle {env.event_id}")

            async def on_dead(msg: teb.Message) -> None:
                dead.append(msg)
                got_dead.set()

            env = envelope("order-9", 1)
            await bus.subscribe_envelope(topic, handler, group="billing")
            await bus.subscribe(topic + ".dlq", on_dead, group="ops")
            await bus.publish_envelope(topic, env)
            await got_dead.wait()
            stats = bus.statistics()

        async def inspect(js: Any) -> tuple[Any, Any, Any]:
            consumer = await js.consumer_info(stream_of(topic), "billing")
            return consumer, await js.stream_info(stream_of(topic)), await js.stream_info(stream_of(topic + ".dlq"))

        consumer, stream, dlq_stream = await on_server(nats_url, inspect)
    (msg,) = dead
    assert msg.data == teb.encode_envelope(env)[0]
    assert msg.key == "order-9"
    assert msg.message_id == f"{env.event_id}.dlq"
    assert msg.headers["X-DLQ-Topic"] == topic
    assert msg.headers["X-DLQ-Group"] == "billing"
    assert msg.headers["X-DLQ-Reason"] == "handler-failed"
    assert msg.headers["X-DLQ-Attempts"] == "3"
    assert msg.headers["X-DLQ-Error"] == f"ValueError: cannot handle {env.event_id}"
    assert msg.headers["X-Event-ID"] == env.event_id
    assert (stats.handler_errors, stats.dead_lettered, stats.backend.terms) == (3, 1, 1)
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0
    assert stream.config.subjects == [topic]
    assert dlq_stream.config.subjects == [topic + ".dlq"]  # its own stream, no overlap


# ------------------------------------------------------------------------------------ close, restart


async def test_close_under_load_loses_nothing_and_leaves_no_task_or_thread(nats_url: str) -> None:
    topic = topic_name("closeload")
    threads_before, tasks_before = len(bridge_threads()), len(all_tasks())
    accepted: list[str] = []
    results: list[teb.PublishResult] = []
    handled = Seen()
    ids: dict[str, int] = {}
    enough = trio.Event()

    async def publisher(bus: teb.EventBus) -> None:
        for i in itertools.count():
            env = envelope(f"agg-{i % 11}", i)
            try:
                await bus.publish_envelope(topic, env)
            except teb.BusClosedError:
                return
            ids[env.event_id] = i
            accepted.append(env.event_id)
            if len(accepted) == 1500:
                enough.set()
            await trio.lowlevel.checkpoint()

    async def reader(channel: trio.MemoryReceiveChannel[teb.PublishResult]) -> None:
        async with channel:
            async for result in channel:
                results.append(result)

    async def handler(env: teb.Envelope) -> None:
        await trio.lowlevel.checkpoint()
        handled.add(seq_of(env))

    with trio.fail_after(60):
        async with teb.open_bus(config(nats_url)) as consumer:
            await consumer.subscribe_envelope(topic, handler, group="work")
            await consumer.publish_envelope(topic, envelope("warm-up", -1), confirm=True)
            async with trio.open_nursery() as outside, teb.open_bus(config(nats_url)) as pub:
                outside.start_soon(reader, pub.publish_results())
                outside.start_soon(publisher, pub)
                await enough.wait()
                # the publishing bus closed while its publisher was running
        # ... and the consuming bus closed in the middle of the stream
        assert len(bridge_threads()) == threads_before
        assert {r.event_id for r in results} == set(accepted)
        assert len(results) == len(accepted)
        assert all(r.success for r in results)
        async with teb.open_bus(config(nats_url)) as rest:
            await rest.subscribe_envelope(topic, handler, group="work")
            await handled.wait(len(accepted) + 1)
    assert handled.distinct == {-1, *ids.values()}
    assert len(bridge_threads()) == threads_before
    assert len(all_tasks()) == tasks_before


async def test_server_restart_mid_stream_every_envelope_is_handled(nats_server: NatsServer) -> None:
    """Kill the server with handlers busy and publishes in flight; restart it on the same store.

    Publishes while it is down are buffered by the client (up to ``reconnect_buffer_bytes``) or come back as
    failed results, which the test republishes once the server is back, as an outbox relay would.
    """
    topic = topic_name("restart")
    total = 2000
    envs = {i: envelope(f"agg-{i % 17}", i) for i in range(total)}
    index = {e.event_id: i for i, e in envs.items()}
    handled = Seen()
    failed: list[int] = []
    gate, server_back = trio.Event(), trio.Event()
    cfg = config(nats_server.url, reconnect_time_wait=0.1, publish_timeout=3.0, reconnect_buffer_bytes=32 * 1024)
    with trio.fail_after(120):
        async with teb.open_bus(cfg, options=teb.BusOptions(lanes=8)) as bus:
            results = bus.publish_results()

            async def handler(env: teb.Envelope) -> None:
                if len(handled.distinct) >= 300:
                    await gate.wait()  # hold the rest of the stream in the lanes, unacked, across the kill
                handled.add(seq_of(env))

            async def outbox() -> None:  # what an outbox relay does: publish failed results again
                while True:  # receive(), not `async for`: this reader is inside the bus block (cancelled below)
                    result = await results.receive()
                    if not result.success:
                        failed.append(index[result.event_id])
                        await server_back.wait()
                        await bus.publish_envelope(topic, envs[index[result.event_id]])

            await bus.subscribe_envelope(topic, handler, group="svc")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox)
                for i in range(total // 2):
                    await bus.publish_envelope(topic, envs[i])
                await handled.wait(300)
                await trio.to_thread.run_sync(nats_server.stop)
                for i in range(total // 2, total):  # while the server is down: buffered, or failed
                    await bus.publish_envelope(topic, envs[i])
                gate.set()  # handlers finish while the server is down: their acks are buffered or lost
                await trio.to_thread.run_sync(nats_server.start)
                server_back.set()
                await handled.wait(total)
                nursery.cancel_scope.cancel()
            stats = bus.statistics()
    assert handled.distinct == set(range(total))
    assert failed  # the reconnect buffer overflowed: those publishes came back as failed results
    assert stats.publish_failed == len(failed)
    assert stats.backend.reconnects >= 1
    assert stats.backend.state == "connected"


@pytest.mark.parametrize("bridge", ["thread", "trio-asyncio"])
async def test_outer_cancellation_is_a_hard_stop_that_loses_nothing(nats_url: str, bridge: str) -> None:
    """Handled messages stay acked (their acks are flushed within the hard-stop grace: none comes again);
    the ones the handlers held are nak'ed and come again at once; no task or thread is left."""
    topic = topic_name("hardstop")
    total = 500
    handled = Seen()
    started = trio.Event()
    threads_before = len(bridge_threads())
    with trio.fail_after(60):
        async with application_loop(bridge):
            await _hard_stop_then_finish(config(nats_url, bridge=bridge), topic, total, handled, started)
    assert handled.distinct == set(range(total))
    assert len(handled.all) == total  # nothing handled before the hard stop was delivered again
    assert len(bridge_threads()) == threads_before


async def _hard_stop_then_finish(cfg: NatsConfig, topic: str, total: int, handled: Seen, started: trio.Event) -> None:
    """Publish ``total``, hard-stop a bus whose handlers got stuck after 100, finish with another bus."""
    threads_before = len(bridge_threads())
    async with teb.open_bus(cfg) as pub:
        for i in range(total):
            await pub.publish_envelope(topic, envelope(f"agg-{i % 7}", i))
        await pub.flush()

    async def stuck(env: teb.Envelope) -> None:
        if len(handled.distinct) >= 100:
            started.set()
            await trio.sleep_forever()  # handlers busy when the cancellation arrives
        handled.add(seq_of(env))

    async with watch_task_leaks() as tasks:
        with trio.CancelScope() as scope:
            async with teb.open_bus(cfg) as bus:
                await bus.subscribe_envelope(topic, stuck, group="g")
                await started.wait()
                scope.cancel()
    assert scope.cancelled_caught
    assert any(t.name == "teb-nats-ack-handler" for t in tasks.spawned)  # the check saw the backend's tasks
    assert len(bridge_threads()) == threads_before

    async def finish(env: teb.Envelope) -> None:
        handled.add(seq_of(env))

    async with teb.open_bus(cfg) as again:
        await again.subscribe_envelope(topic, finish, group="g")
        await handled.wait(total)  # nak'ed at the hard stop: redelivered at once, not after ack_wait


async def test_bus_fails_when_the_client_gives_up_reconnecting(nats_server: NatsServer) -> None:
    cfg = config(nats_server.url, max_reconnect_attempts=1, reconnect_time_wait=0.05, connect_timeout=0.5)

    async def run() -> None:
        async with teb.open_bus(cfg) as bus:
            await bus.publish(topic_name("giveup"), b"x", confirm=True)
            await trio.to_thread.run_sync(nats_server.stop)
            await trio.sleep_forever()  # the bus's own failure cancels this block

    with trio.fail_after(30), pytest.raises(teb.BackendUnavailable, match="gave up reconnecting"):
        await run()
    assert bridge_threads() == []


async def test_publish_refused_by_jetstream_is_a_failed_result(nats_url: str) -> None:
    topic = topic_name("refused")
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url)) as bus:
            results = bus.publish_results()
            await bus.publish_envelope(topic, envelope("a", 1), confirm=True)
            await on_server(nats_url, lambda js: js.delete_stream(stream_of(topic)))  # gone behind our back
            with pytest.raises(teb.PublishError, match="no stream captures") as info:
                await bus.publish_envelope(topic, envelope("a", 2), confirm=True)
            assert type(info.value.__cause__).__name__ == "PublishError"
            first, second = await results.receive(), await results.receive()
            await bus.configure_topic(topic, teb.TopicOptions())  # provisions the stream again
            await bus.publish_envelope(topic, envelope("a", 3), confirm=True)
            stats = bus.statistics()
    assert (first.success, second.success) == (True, False)
    assert "no stream captures" in str(second.error)
    assert (stats.published, stats.publish_failed) == (2, 1)


# ------------------------------------------------------------------------------ connection and config


# ------------------------------------------------------------------------------ compression, ephemeral


async def test_lz4_round_trip_and_transparent_decompression(nats_url: str) -> None:
    topic = topic_name("lz4")
    big = b"compress me please " * 500
    tiny = b"tiny"
    noise = os.urandom(4096)  # does not shrink: sent as it is
    got: dict[str, list[teb.Message]] = defaultdict(list)
    done = {name: trio.Event() for name in ("lz4", "plain")}
    with trio.fail_after(30):
        async with (
            teb.open_bus(config(nats_url, compression="lz4")) as packed,
            teb.open_bus(config(nats_url)) as plain,  # no compression configured: still decompresses
        ):
            for name, bus in (("lz4", packed), ("plain", plain)):

                async def handler(msg: teb.Message, name: str = name) -> None:
                    got[name].append(msg)
                    if len(got[name]) == 3:
                        done[name].set()

                await bus.subscribe(topic, handler, group=name)
            for body in (big, tiny, noise):
                await packed.publish(topic, body, key="k", headers={"h": "v"})
            await done["lz4"].wait()
            await done["plain"].wait()

        async def raw(js: Any) -> list[Any]:
            return [await js.get_msg(stream_of(topic), seq) for seq in (1, 2, 3)]

        stored = await on_server(nats_url, raw)
    for name in ("lz4", "plain"):
        assert [m.data for m in got[name]] == [big, tiny, noise]
        assert all(m.headers == {"h": "v"} and m.key == "k" for m in got[name])
    assert len(stored[0].data) < len(big) // 10
    assert (stored[0].headers or {}).get("X-Content-Encoding") == "lz4"
    assert stored[1].data == tiny
    assert "X-Content-Encoding" not in (stored[1].headers or {})
    assert stored[2].data == noise
    assert "X-Content-Encoding" not in (stored[2].headers or {})


async def test_ephemeral_topics_use_core_nats_with_queue_groups(nats_url: str) -> None:
    topic = topic_name("ephemeral")
    seen: dict[str, list[int]] = defaultdict(list)
    attempts: dict[int, list[int]] = defaultdict(list)
    g1, g2 = Seen(), Seen()
    retry = teb.RetryPolicy(max_attempts=3, initial_backoff=0.05, strategy="redeliver")
    with trio.fail_after(30):
        async with (
            teb.open_bus(config(nats_url), options=teb.BusOptions(retry=retry)) as a,
            teb.open_bus(config(nats_url)) as b,
            teb.open_bus(config(nats_url)) as c,
        ):
            for bus in (a, b, c):
                await bus.configure_topic(topic, teb.TopicOptions(persistent=False))
            for bus, group, name, sink in ((a, "g1", "a", g1), (b, "g2", "b", g2), (c, "g2", "c", g2)):

                async def handler(msg: teb.Message, name: str = name, sink: Seen = sink) -> None:
                    n = int(msg.data)
                    if name == "a":
                        attempts[n].append(msg.delivery_attempt)
                        if n % 10 == 0 and msg.delivery_attempt == 1:
                            raise RuntimeError("nak: redelivered locally")
                    seen[name].append(n)
                    sink.add(n)

                await bus.subscribe(topic, handler, group=group)
            for i in range(100):
                await a.publish(topic, b"%d" % i, key=f"k{i % 5}")
            await g1.wait(100)
            await g2.wait(100)
            stats = a.statistics()
        assert await on_server(nats_url, functools.partial(_stream_for, topic)) is None
    assert sorted(seen["a"]) == list(range(100))
    assert sorted(seen["b"] + seen["c"]) == list(range(100))
    assert all(attempts[n] == ([1, 2] if n % 10 == 0 else [1]) for n in range(100))
    assert stats.backend.core_published == 100
    assert stats.redelivered == 10
