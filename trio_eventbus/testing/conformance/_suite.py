"""BackendConformance: the behaviour checks every backend must pass, as a class a backend's tests subclass.

See :mod:`trio_eventbus.testing.conformance` for how to subclass it. Each check runs under
``trio.fail_after(case.timeout)`` inside the case's context (:func:`running`), waits on events rather than
sleeping, uses unique topic names, and opens its buses under a task-leak watch (no task a bus spawned may
outlive its ``open_bus`` block). A check that needs a feature the case lacks is skipped with the reason (see
:func:`requires`); none passes without running.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import pytest
import trio

import trio_eventbus as teb
from trio_eventbus.testing import all_tasks, collect

from ._case import (
    BackendCase,
    Counter,
    envelope,
    fast_retry,
    lacking,
    open_watched_bus,
    requires,
    running,
    seq_of,
    skip_reason,
    unique_topic,
)
from ._groups import group_order_scenario
from ._restart import restart_scenario

__all__ = ["BackendConformance"]


class BackendConformance:
    """The conformance checks; subclass it as ``Test<Backend>`` and provide the ``backend_case`` fixture.

    Optional: override ``restart_case`` (default: ``backend_case``) with a case on a private broker whose
    ``restart`` hook stops and starts it, for :meth:`test_broker_restart_loses_nothing_acknowledged`.
    """

    @pytest.fixture
    def backend_case(self) -> BackendCase:
        """The backend under test: subclasses must override this (synchronous) fixture."""
        raise NotImplementedError(f"{type(self).__name__} must define the backend_case fixture")

    @pytest.fixture
    def restart_case(self, backend_case: BackendCase) -> BackendCase:
        """A case whose broker the restart scenario may stop and start (default: ``backend_case``)."""
        return backend_case

    @pytest.fixture(autouse=True)
    def _feature_gate(self, request: pytest.FixtureRequest) -> None:
        """Skip a check whose features the case lacks, with the reason (before the Trio run starts)."""
        name = "restart_case" if "restart_case" in request.fixturenames else "backend_case"
        case = request.getfixturevalue(name)
        if not isinstance(case, BackendCase):
            raise TypeError(f"{name} must be a synchronous fixture returning a BackendCase, got {case!r}")
        reason = skip_reason(case, request.function)
        if reason is not None:
            pytest.skip(reason)

    # -- publish and subscribe -------------------------------------------------------------------------------

    @requires("persistent")
    async def test_publish_then_subscribe_persistent(self, backend_case: BackendCase) -> None:
        """Messages published before anyone subscribes are delivered once a subscriber arrives."""
        case = backend_case
        topic = unique_topic(case, "persist")
        got: list[teb.Envelope] = []
        counter = Counter(50)
        async with running(case):
            async with open_watched_bus(case) as bus:
                await bus.configure_topic(topic, teb.TopicOptions())
                for i in range(50):
                    await bus.publish_envelope(topic, envelope("agg-1", i))
                await bus.flush()
                assert bus.statistics().published == 50

                async def handler(env: teb.Envelope) -> None:
                    got.append(env)
                    counter.hit()

                await bus.subscribe_envelope(topic, handler, group="late")
                await counter.done.wait()
            assert [seq_of(e) for e in got] == list(range(50))

    async def test_concurrent_publishers_and_subscribers(self, backend_case: BackendCase) -> None:
        """Four publishers and a subscriber running concurrently: every message arrives, none twice."""
        case = backend_case
        topic = unique_topic(case, "concurrent")
        seen: list[int] = []
        counter = Counter(4 * 250)
        async with running(case), open_watched_bus(case, teb.BusOptions(lanes=8, workers=4)) as bus:

            async def handler(msg: teb.Message) -> None:
                seen.append(int(msg.data))
                counter.hit()

            await bus.subscribe(topic, handler, group="svc")

            async def producer(p: int) -> None:
                for i in range(250):
                    await bus.publish(topic, b"%d" % (p * 1000 + i), key=f"k{i % 7}" if p % 2 else None)

            async with trio.open_nursery() as nursery:
                for p in range(4):
                    nursery.start_soon(producer, p)
            await counter.done.wait()
        assert sorted(seen) == sorted(p * 1000 + i for p in range(4) for i in range(250))

    async def test_many_topics_are_isolated(self, backend_case: BackendCase) -> None:
        """Each subscriber sees only its own topic's messages."""
        case = backend_case
        topics = [unique_topic(case, f"iso{t}") for t in range(6)]
        seen: dict[str, list[str]] = defaultdict(list)
        counter = Counter(6 * 20)
        async with running(case), open_watched_bus(case) as bus:
            for topic in topics:

                async def handler(msg: teb.Message, topic: str = topic) -> None:
                    seen[topic].append(msg.data.decode())
                    counter.hit()

                await bus.subscribe(topic, handler, group="svc")
            for i in range(20):
                for topic in topics:
                    await bus.publish(topic, topic.encode(), key=f"k{i}")
            await counter.done.wait()
            await bus.flush()
        for topic in topics:
            assert seen[topic] == [topic] * 20

    @requires("ordered_per_key")
    async def test_per_key_order_across_lanes(self, backend_case: BackendCase) -> None:
        """100 keys x 100 envelopes through 16 lanes: every key's envelopes are handled in publish order."""
        case = backend_case
        topic = unique_topic(case, "order")
        last: dict[str, int] = {}
        violations = 0
        counter = Counter(100 * 100)
        options = teb.BusOptions(lanes=16, lane_buffer=32)
        async with running(case, timeout_factor=2), open_watched_bus(case, options) as bus:

            async def handler(env: teb.Envelope) -> None:
                nonlocal violations
                n = seq_of(env)
                if last.get(env.aggregate_id, -1) != n - 1:
                    violations += 1
                last[env.aggregate_id] = n
                if n % 3 == 0:
                    await trio.lowlevel.checkpoint()  # interleave lanes
                counter.hit()

            await bus.subscribe_envelope(topic, handler, group="svc")
            for n in range(100):
                for a in range(100):
                    await bus.publish_envelope(topic, envelope(f"order-{a}", n))
            await counter.done.wait()
        assert violations == 0
        assert last == {f"order-{a}": 99 for a in range(100)}

    async def test_raw_messages_keep_key_headers_and_id(self, backend_case: BackendCase) -> None:
        """A raw message arrives with its bytes, key, headers and message id intact."""
        case = backend_case
        topic = unique_topic(case, "raw")
        got: list[teb.Message] = []
        arrived = trio.Event()
        async with running(case), open_watched_bus(case) as bus:

            async def handler(msg: teb.Message) -> None:
                got.append(msg)
                arrived.set()

            await bus.subscribe(topic, handler, group="svc")
            await bus.publish(topic, b"\x00\x01binary", key="user-7", headers={"k": "v"}, message_id="m-1")
            await arrived.wait()
        (msg,) = got
        assert (msg.topic, msg.data, msg.key, msg.message_id, msg.delivery_attempt) == (
            topic,
            b"\x00\x01binary",
            "user-7",
            "m-1",
            1,
        )
        assert msg.headers["k"] == "v"

    # -- retries and dead letters ----------------------------------------------------------------------------

    @staticmethod
    async def _retry_twice(case: BackendCase, strategy: str) -> tuple[dict[str, list[int]], teb.Statistics]:
        """Ten messages whose handler fails twice each; the attempts seen per message and the statistics."""
        topic = unique_topic(case, f"retry-{strategy}")
        attempts: dict[str, list[int]] = defaultdict(list)
        counter = Counter(10)
        async with running(case), open_watched_bus(case, teb.BusOptions(retry=fast_retry(5, strategy))) as bus:

            async def handler(msg: teb.Message) -> None:
                attempts[msg.data.decode()].append(msg.delivery_attempt)
                if len(attempts[msg.data.decode()]) < 3:
                    raise RuntimeError("not yet")
                counter.hit()

            await bus.subscribe(topic, handler, group="svc")
            for i in range(10):
                await bus.publish(topic, b"m%d" % i, key=f"k{i}")
            await counter.done.wait()
            stats = bus.statistics()
        assert all(seq == [1, 2, 3] for seq in attempts.values()), attempts
        assert len(attempts) == 10
        assert (stats.handler_errors, stats.retries, stats.dead_lettered) == (20, 20, 0)
        return attempts, stats

    async def test_retry_in_place(self, backend_case: BackendCase) -> None:
        """A handler failing twice per message succeeds on the third attempt, retried inside the bus."""
        _, stats = await self._retry_twice(backend_case, "in_place")
        assert stats.redelivered == 0

    @requires("redelivers")
    async def test_retry_redelivered_by_the_broker(self, backend_case: BackendCase) -> None:
        """``strategy="redeliver"``: each failure is a NAK; the broker redelivers with attempt + 1."""
        _, stats = await self._retry_twice(backend_case, "redeliver")
        assert stats.redelivered == 20

    @requires("redelivers")
    async def test_nak_delay_is_respected(self, backend_case: BackendCase) -> None:
        """A NAK with a delay is not redelivered before the delay has passed."""
        case = backend_case
        topic = unique_topic(case, "nakdelay")
        delay = 0.25
        retry = teb.RetryPolicy(max_attempts=2, initial_backoff=delay, max_backoff=delay, strategy="redeliver")
        seen: dict[int, list[float]] = defaultdict(list)
        counter = Counter(5)
        async with running(case), open_watched_bus(case, teb.BusOptions(retry=retry)) as bus:

            async def handler(msg: teb.Message) -> None:
                seen[int(msg.data)].append(trio.current_time())
                if msg.delivery_attempt == 1:
                    raise RuntimeError("again later")
                counter.hit()

            await bus.subscribe(topic, handler, group="svc")
            for i in range(5):
                await bus.publish(topic, b"%d" % i, key=f"k{i}")
            await counter.done.wait()
        gaps = [times[1] - times[0] for times in seen.values()]
        assert len(gaps) == 5
        assert all(len(times) == 2 for times in seen.values()), seen
        assert min(gaps) >= delay * 0.9, gaps  # 10% for clock granularity across the broker

    @lacking("redelivers")
    async def test_retry_redeliver_falls_back_in_place(self, backend_case: BackendCase) -> None:
        """Without broker redelivery, ``strategy="redeliver"`` retries in place: same attempts, no NAK."""
        _, stats = await self._retry_twice(backend_case, "redeliver")
        assert stats.redelivered == 0

    async def test_dead_letter_after_last_retry(self, backend_case: BackendCase) -> None:
        """After the last attempt the message goes to <topic>.dlq with cause headers, and is not redelivered."""
        case = backend_case
        topic = unique_topic(case, "dlq")
        dead: list[teb.Message] = []
        got_dead = trio.Event()
        good = Counter(2)
        calls = 0
        async with running(case), open_watched_bus(case, teb.BusOptions(retry=fast_retry(3))) as bus:

            async def handler(msg: teb.Message) -> None:
                nonlocal calls
                if msg.data == b"poison":
                    calls += 1
                    raise ValueError("cannot digest\nthis")
                good.hit()

            async def on_dead(msg: teb.Message) -> None:
                dead.append(msg)
                got_dead.set()

            await bus.subscribe(topic, handler, group="svc")
            await bus.subscribe(topic + ".dlq", on_dead, group="svc")
            await bus.publish(topic, b"ok-1", key="a")
            await bus.publish(topic, b"poison", key="a", headers={"X-Custom": "kept"})
            await bus.publish(topic, b"ok-2", key="a")
            await got_dead.wait()
            await good.done.wait()
            stats = bus.statistics()
        assert calls == 3
        assert len(dead) == 1
        msg = dead[0]
        assert msg.data == b"poison"
        assert msg.key == "a"
        assert msg.headers["X-DLQ-Topic"] == topic
        assert msg.headers["X-DLQ-Attempts"] == "3"
        assert msg.headers["X-DLQ-Reason"] == "handler-failed"
        assert msg.headers["X-DLQ-Error"] == "ValueError: cannot digest this"
        assert msg.headers["X-Custom"] == "kept"
        assert stats.dead_lettered == 1
        assert stats.handler_errors == 3

    async def test_undecodable_envelope_is_dead_lettered(self, backend_case: BackendCase) -> None:
        """Bytes that are not an envelope go to the dead-letter topic at once, without calling the handler."""
        case = backend_case
        topic = unique_topic(case, "garbage")
        dead: list[teb.Message] = []
        got_dead = trio.Event()
        good = trio.Event()
        async with running(case), open_watched_bus(case) as bus:

            async def handler(env: teb.Envelope) -> None:
                good.set()

            async def on_dead(msg: teb.Message) -> None:
                dead.append(msg)
                got_dead.set()

            await bus.subscribe_envelope(topic, handler, group="svc")
            await bus.subscribe(topic + ".dlq", on_dead, group="svc")
            await bus.publish(topic, b"\xff not json", key="x")
            await bus.publish_envelope(topic, envelope("x", 1))
            await got_dead.wait()
            await good.wait()
            stats = bus.statistics()
        assert [m.data for m in dead] == [b"\xff not json"]
        assert dead[0].headers["X-DLQ-Reason"] == "undecodable"
        assert dead[0].headers["X-DLQ-Error"].startswith("InvalidEnvelopeError")
        assert stats.undecodable == 1
        assert stats.handler_errors == 0

    # -- groups, topics, dedupe ------------------------------------------------------------------------------

    @requires("consumer_groups")
    async def test_two_groups_each_get_everything(self, backend_case: BackendCase) -> None:
        """Two buses in different groups each handle every message; two buses in one group split them."""
        case = backend_case
        topic = unique_topic(case, "groups")
        seen: dict[str, list[int]] = defaultdict(list)
        total = Counter(2 * 200)
        async with (
            running(case),
            open_watched_bus(case) as a,
            open_watched_bus(case) as b,
            open_watched_bus(case) as c,
        ):
            for bus, group, name in ((a, "g1", "a"), (b, "g2", "b"), (c, "g2", "c")):

                async def handler(msg: teb.Message, name: str = name) -> None:
                    seen[name].append(int(msg.data))
                    total.hit()

                await bus.subscribe(topic, handler, group=group)
            for i in range(200):
                await a.publish(topic, b"%d" % i, key=f"k{i % 10}")
            await a.flush()
            await total.done.wait()
        assert sorted(seen["a"]) == list(range(200))
        assert sorted(seen["b"] + seen["c"]) == list(range(200))

    @requires("dedupes")
    async def test_duplicate_message_id_is_stored_once(self, backend_case: BackendCase) -> None:
        """A message id published again within ``duplicate_window`` is acknowledged but delivered once."""
        case = backend_case
        topic = unique_topic(case, "dedupe")
        got: list[bytes] = []
        last = trio.Event()
        async with running(case), open_watched_bus(case) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(duplicate_window=60))

            async def handler(msg: teb.Message) -> None:
                got.append(msg.data)
                if msg.data == b"last":
                    last.set()

            await bus.subscribe(topic, handler, group="svc")
            for copy in range(3):
                await bus.publish(topic, b"once-%d" % copy, key="k", message_id="same-id", confirm=True)
            await bus.publish(topic, b"last", key="k", message_id="other-id", confirm=True)
            await last.wait()  # same key: delivered after any stored copy
            stats = bus.statistics()
        assert got == [b"once-0", b"last"]
        assert stats.published == 4  # every copy is acknowledged

    @requires("ephemeral_topics")
    async def test_ephemeral_topic_delivers_only_to_live_subscribers(self, backend_case: BackendCase) -> None:
        """``TopicOptions(persistent=False)``: a message nobody listens to is dropped, a heard one delivered."""
        case = backend_case
        topic = unique_topic(case, "ephemeral")
        got: list[bytes] = []
        arrived = trio.Event()
        async with running(case), open_watched_bus(case) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(persistent=False))
            assert not bus.topic_config(topic).persistent
            await bus.publish(topic, b"nobody listens", key="k", confirm=True)

            async def handler(msg: teb.Message) -> None:
                got.append(msg.data)
                arrived.set()

            await bus.subscribe(topic, handler, group="svc")
            await bus.publish(topic, b"heard", key="k", confirm=True)
            await arrived.wait()
        assert got == [b"heard"]

    @lacking("ephemeral_topics")
    async def test_ephemeral_topic_refused_without_the_feature(self, backend_case: BackendCase) -> None:
        """A backend without ephemeral topics refuses ``persistent=False`` instead of silently persisting."""
        case = backend_case
        topic = unique_topic(case, "no-ephemeral")
        async with running(case), open_watched_bus(case) as bus:
            with pytest.raises(teb.InvalidOptionError):
                await bus.configure_topic(topic, teb.TopicOptions(persistent=False))
            await bus.publish(topic + "-ok", b"the bus still works", confirm=True)

    # -- close and results -----------------------------------------------------------------------------------

    @requires("persistent")
    async def test_close_during_load_loses_nothing(self, backend_case: BackendCase) -> None:
        """Closing a bus in the middle of a stream: a later bus in the same group gets the rest; no task left."""
        case = backend_case
        topic = unique_topic(case, "closeload")
        handled: set[int] = set()
        first_batch = Counter(100)
        tasks_before = len(all_tasks())
        async with running(case, timeout_factor=2), open_watched_bus(case) as pub:
            results = pub.publish_results()
            async with open_watched_bus(case, teb.BusOptions(close_timeout=5)) as bus:

                async def slow(env: teb.Envelope) -> None:
                    await trio.lowlevel.checkpoint()
                    handled.add(seq_of(env))
                    first_batch.hit()

                await bus.subscribe_envelope(topic, slow, group="work")
                for i in range(1000):
                    await pub.publish_envelope(topic, envelope(f"agg-{i % 13}", i))
                await first_batch.done.wait()
            # the first bus is gone, and the leak watch saw its tasks end
            with pytest.raises(teb.BusClosedError):
                await bus.publish(topic, b"x")
            await pub.flush()
            ok = 0
            while ok < 1000:
                result = await results.receive()
                assert result.success, result
                ok += 1
            rest = Counter(1000)
            rest.hit(len(handled))
            async with open_watched_bus(case) as bus2:

                async def finish(env: teb.Envelope) -> None:
                    handled.add(seq_of(env))
                    rest.count = len(handled)
                    if rest.count >= 1000:
                        rest.done.set()

                await bus2.subscribe_envelope(topic, finish, group="work")
                await rest.done.wait()
        assert handled == set(range(1000))
        assert len(all_tasks()) == tasks_before

    async def test_publish_after_close_raises(self, backend_case: BackendCase) -> None:
        """Publishing or subscribing on a closed bus raises BusClosedError, without awaiting anything."""
        case = backend_case
        topic = unique_topic(case, "closed")
        async with running(case):
            async with open_watched_bus(case) as bus:
                await bus.publish(topic, b"x")
            with pytest.raises(teb.BusClosedError):
                await bus.publish(topic, b"y")
            with pytest.raises(teb.BusClosedError):
                await bus.publish_envelope(topic, envelope("a", 1))

            async def handler(msg: teb.Message) -> None:
                raise AssertionError("unreachable")

            with pytest.raises(teb.BusClosedError):
                await bus.subscribe(topic, handler, group="svc")
            assert bus.statistics().closing

    async def test_duplicate_subscribe_raises(self, backend_case: BackendCase) -> None:
        """A second subscription of one bus to the same (topic, group) raises; another group is fine."""
        case = backend_case
        topic = unique_topic(case, "dupsub")

        async def handler(msg: teb.Message) -> None:
            return None

        async with running(case), open_watched_bus(case) as bus:
            await bus.subscribe(topic, handler, group="svc")
            with pytest.raises(teb.AlreadySubscribedError):
                await bus.subscribe(topic, handler, group="svc")
            await bus.subscribe(topic, handler, group="other")
            assert bus.statistics().subscriptions == 2

    async def test_exactly_one_publish_result_per_envelope(self, backend_case: BackendCase) -> None:
        """Every envelope gets exactly one PublishResult (channel and callback); the channel ends at close."""
        case = backend_case
        topic = unique_topic(case, "results")
        via_callback: list[teb.PublishResult] = []
        received: list[teb.PublishResult] = []

        async def on_results(batch: Sequence[teb.PublishResult]) -> None:
            assert 0 < len(batch) <= 16
            via_callback.extend(batch)

        options = teb.BusOptions(on_publish_results=on_results, results_buffer=16, publish_batch=7)

        async with running(case), trio.open_nursery() as nursery, open_watched_bus(case, options) as bus:
            nursery.start_soon(collect, bus.publish_results(), received)
            sent = [envelope(f"agg-{i % 5}", i) for i in range(300)]
            for env in sent:
                await bus.publish_envelope(topic, env)
            await bus.publish(topic, b"raw messages get no result")
            await bus.flush()
            # leaving the bus ends the results channel, which ends the reader
        ids = [e.event_id for e in sent]
        assert sorted(r.event_id for r in received) == sorted(ids)
        assert all(r.success and r.topic == topic and r.event_type == "Tested" for r in received)
        assert sorted(r.event_id for r in via_callback) == sorted(ids)

    async def test_confirm_waits_for_ack(self, backend_case: BackendCase) -> None:
        """confirm=True returns after the broker's ack: the outcome is already counted."""
        case = backend_case
        topic = unique_topic(case, "confirm")
        async with running(case), open_watched_bus(case) as bus:
            for i in range(5):
                await bus.publish_envelope(topic, envelope("c", i), confirm=True)
                stats = bus.statistics()
                assert stats.published == i + 1
                assert stats.pending_publishes == 0

    async def test_oversize_and_bad_input_keep_bus_running(self, backend_case: BackendCase) -> None:
        """Bad input raises a typed error at the call, nothing is sent, and the bus keeps working."""
        case = backend_case
        topic = unique_topic(case, "bad")
        arrived = trio.Event()
        async with running(case), open_watched_bus(case, teb.BusOptions(max_message_bytes=1000)) as bus:

            async def handler(msg: teb.Message) -> None:
                assert msg.data == b"fine"
                arrived.set()

            with pytest.raises(teb.MessageTooLargeError):
                await bus.publish(topic, b"x" * 1001)
            for bad_topic in ("", " ", "a b", "orders.*", "orders.>", "a..b", ".a", "x" * 250):
                with pytest.raises(teb.InvalidTopicError):
                    await bus.publish(bad_topic, b"x")
            with pytest.raises(teb.InvalidEnvelopeError):
                await bus.publish(topic, "text, not bytes")  # type: ignore[arg-type]
            with pytest.raises(teb.InvalidEnvelopeError):
                await bus.publish_envelope(topic, b"not an envelope")  # type: ignore[arg-type]
            with pytest.raises(teb.InvalidHandlerError):
                await bus.subscribe(topic, lambda msg: None, group="svc")  # type: ignore[arg-type,return-value]
            assert bus.statistics().published == 0
            await bus.subscribe(topic, handler, group="svc")
            await bus.publish(topic, b"fine")
            await arrived.wait()

    # -- the broker goes away --------------------------------------------------------------------------------

    @requires("restart", "persistent")
    async def test_broker_restart_loses_nothing_acknowledged(self, restart_case: BackendCase) -> None:
        """The broker restarts while the bus is open and publishing: every acknowledged message is handled,
        and per key the first deliveries come in publish order (see :func:`restart_scenario`)."""
        case = restart_case
        report = await restart_scenario(case)
        print(report)  # the figures, for the test log (pytest -s or -rP)
        assert report.acked_after == report.sent_after, report  # once the broker is back, publishing works
        assert report.lost == 0, report
        if case.features.ordered_per_key:
            assert report.order_violations == 0, report

    # -- partitioned consumer groups ---------------------------------------------------------------------------

    @requires("consumer_groups", "ordered_per_key", "partitioned_groups")
    async def test_one_group_of_two_buses_keeps_per_key_order(self, backend_case: BackendCase) -> None:
        """Two buses in one group on a 4-partition topic: every message handled, per key in publish order and
        never concurrently across the buses (see :func:`group_order_scenario`)."""
        report = await group_order_scenario(backend_case)
        print(report)
        assert (report.lost, report.order_violations, report.concurrent) == (0, 0, 0), report
