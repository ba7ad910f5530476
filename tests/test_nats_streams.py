"""``NatsConfig.streams``: the per-topic streams the bus owns, or existing streams that capture a topic (marker
``nats`` except the pure tests).

A "foreign" stream here is one made with a plain nats-py client, as another service (a Go one) would make it;
server-side facts are read the same way (:func:`nats_helpers.on_server`).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from nats.js import api
from nats.js.errors import NotFoundError
from nats_helpers import config, on_server, stream_of, topic_name

import trio_eventbus as teb
from trio_eventbus.backends.nats.config import NatsConfig
from trio_eventbus.backends.nats.streams import OWNER, captures


async def _find(js: Any, subject: str) -> str | None:
    try:
        name: str = await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        return None
    return name


async def _drop(url: str, *names: str) -> None:
    async def drop(js: Any) -> None:
        for name in names:
            try:
                await js.delete_stream(name)
            except NotFoundError:
                pass

    await on_server(url, drop)


class Counter:
    """Counts handled messages per topic; ``wait(n)`` returns once ``n`` were handled in all."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[bytes]] = {}
        self.total = 0
        self._enough: tuple[int, trio.Event] | None = None

    async def handle(self, msg: teb.Message) -> None:
        self.by_topic.setdefault(msg.topic, []).append(msg.data)
        self.total += 1
        if self._enough is not None and self.total >= self._enough[0]:
            self._enough[1].set()

    async def wait(self, n: int) -> None:
        self._enough = (n, trio.Event())
        if self.total >= n:
            return
        await self._enough[1].wait()


def test_captures_matches_nats_wildcards() -> None:
    assert captures("orders.>", "orders.created")
    assert captures("orders.>", "orders.created.dlq")
    assert not captures("orders.>", "orders")
    assert captures("*.orders.created", "3.orders.created")
    assert not captures("*.orders.created", "orders.created")
    assert captures("orders.created", "orders.created")
    assert not captures("orders.created", "orders.created.dlq")
    assert not captures("orders.*", "orders.created.dlq")


def test_streams_option_is_validated() -> None:
    assert NatsConfig().streams == "per_topic"
    for good in ("per_topic", "existing", "existing_or_per_topic"):
        assert NatsConfig(streams=good).streams == good  # type: ignore[arg-type]
    for bad in ("auto", "Existing", None, True):
        with pytest.raises(teb.InvalidOptionError, match="streams"):
            NatsConfig(streams=bad)  # type: ignore[arg-type]


@pytest.mark.nats
async def test_existing_mode_without_a_capturing_stream_is_a_typed_error_at_the_call(nats_url: str) -> None:
    topic = topic_name("nostream")

    async def handler(msg: teb.Message) -> None:
        raise AssertionError("unreachable")

    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url, streams="existing")) as bus:
            with pytest.raises(teb.InvalidTopicError, match="no JetStream stream captures the subject") as info:
                await bus.publish(topic, b"x")
            with pytest.raises(teb.InvalidTopicError, match="no JetStream stream captures"):
                await bus.subscribe(topic, handler, group="svc")
            with pytest.raises(teb.InvalidTopicError, match="no JetStream stream captures"):
                await bus.configure_topic(topic, teb.TopicOptions(max_age=60))
            ephemeral = f"{topic}.core"  # ephemeral topics need no stream in any mode
            await bus.configure_topic(ephemeral, teb.TopicOptions(persistent=False))
            await bus.publish(ephemeral, b"core")
        assert await on_server(nats_url, lambda js: _find(js, topic)) is None  # nothing was created
    print(f"error: {info.value}")


@pytest.mark.nats
async def test_existing_mode_shares_one_stream_among_topics_and_their_dead_letters(nats_url: str) -> None:
    """Go's usual set-up: one stream capturing ``prefix.>``. Two topics and a dead-letter topic in it, one group
    on both topics: each subscription gets its topic's messages only (its own consumer ``<group>~<topic>``)."""
    stem = topic_name("shared").replace("-", "_")
    foreign = f"GO_{stem}"
    a, b = f"{stem}.a", f"{stem}.b"
    counter = Counter()
    per_topic = 25
    failed = trio.Event()

    async def handle_a(msg: teb.Message) -> None:
        if msg.data == b"poison":
            failed.set()
            raise teb.NonRetryableError("poison")
        await counter.handle(msg)

    with trio.fail_after(60):
        await on_server(nats_url, lambda js: js.add_stream(name=foreign, subjects=[f"{stem}.>"]))
        try:
            async with teb.open_bus(config(nats_url, streams="existing")) as bus:
                await bus.subscribe(a, handle_a, group="svc")
                await bus.subscribe(b, counter.handle, group="svc")
                for i in range(per_topic):
                    await bus.publish(a, b"a%d" % i, key=f"k{i % 5}")
                    await bus.publish(b, b"b%d" % i, key=f"k{i % 5}")
                await bus.publish(a, b"poison", key="p")
                await bus.flush()
                await counter.wait(2 * per_topic)
                await failed.wait()
                await bus.wait_idle()
                # a topic whose consumer name clashes in the shared stream ('.' and '_' both become '_')
                await bus.subscribe(f"{stem}.a.x", counter.handle, group="svc")
                with pytest.raises(teb.InvalidTopicError, match="exists for the subject"):
                    await bus.subscribe(f"{stem}.a_x", counter.handle, group="svc")

            async def facts(js: Any) -> tuple[Any, ...]:
                info = await js.stream_info(foreign)
                consumers = {c.name: c.config.filter_subject for c in await js.consumers_info(foreign)}
                dead = await js.get_last_msg(foreign, f"{a}.dlq")
                return info, consumers, dead, [await _find(js, s) for s in (a, b)]

            info, consumers, dead, owners = await on_server(nats_url, facts)
        finally:
            await _drop(nats_url, foreign, stream_of(a), stream_of(b))
    for t in (a, b):
        got = [int(body[1:]) for body in counter.by_topic[t]]
        assert sorted(got) == list(range(per_topic))  # this topic's messages, each once
        assert all([i for i in got if i % 5 == k] == sorted(i for i in got if i % 5 == k) for k in range(5))
    assert owners == [foreign, foreign]
    assert consumers[f"svc~{stem}_a"] == a
    assert consumers[f"svc~{stem}_b"] == b
    assert dead.data == b"poison"
    assert dead.headers["X-DLQ-Reason"] == "non-retryable"
    assert info.config.subjects == [f"{stem}.>"]  # untouched
    assert info.state.messages == 2 * per_topic + 2  # both topics and the dead letter, in the one stream
    print(
        f"sent {2 * per_topic + 1}, handled a={len(counter.by_topic[a])} b={len(counter.by_topic[b])}, "
        f"dead-lettered 1, consumers {sorted(consumers)}"
    )


@pytest.mark.nats
async def test_dead_letters_without_a_capturing_stream_are_redelivered_not_lost(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``streams="existing"`` the dead-letter topic needs a capturing stream too; without one the
    dead-letter publish fails with the missing-stream error, logged, and the message is nak'ed (redelivered
    after the retry backoff), never acked unhandled."""
    caplog.set_level(logging.ERROR, logger="trio_eventbus.dispatch")
    stem = topic_name("nodlq").replace("-", "_")
    foreign, topic = f"GO_{stem}", f"{stem}.events"
    attempts: list[int] = []
    twice = trio.Event()

    async def handler(msg: teb.Message, ctx: teb.HandlerContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) >= 2:
            twice.set()
        raise teb.NonRetryableError("always")

    retry = teb.RetryPolicy(max_attempts=1, initial_backoff=0.05, max_backoff=0.05)
    with trio.fail_after(30):
        await on_server(nats_url, lambda js: js.add_stream(name=foreign, subjects=[topic]))
        try:
            async with teb.open_bus(config(nats_url, streams="existing")) as bus:
                await bus.subscribe(topic, handler, group="svc", context=True, retry=retry)
                await bus.publish(topic, b"doomed", confirm=True)
                await twice.wait()
            state = await on_server(nats_url, lambda js: js.stream_info(foreign))
        finally:
            await _drop(nats_url, foreign)
    failures = [r.getMessage() for r in caplog.records if "dead-letter publish" in r.getMessage()]
    assert failures
    assert "no JetStream stream captures the subject" in failures[0]
    assert attempts[:2] == [1, 2]  # redelivered by the broker after the failed dead-letter publish
    assert state.state.messages == 1  # nothing was created for the dead letters
    print(f"handled attempts {attempts}, dead-letter publish failures logged {len(failures)}")


@pytest.mark.nats
async def test_existing_mode_partitioned_topic_needs_its_partition_subjects(nats_url: str) -> None:
    stem = topic_name("parts").replace("-", "_")
    wide, narrow = f"GO_{stem}_wide", f"GO_{stem}_narrow"
    topic, other = f"{stem}.w.orders", f"{stem}.n.orders"
    handled: dict[str, list[int]] = {}
    done = trio.Event()
    total = 60

    async def handler(msg: teb.Message) -> None:
        assert msg.key is not None
        handled.setdefault(msg.key, []).append(int(msg.data))
        if sum(map(len, handled.values())) == total:
            done.set()

    async def setup(js: Any) -> None:
        await js.add_stream(name=wide, subjects=[f"{stem}.w.>", *(f"{p}.{stem}.w.>" for p in range(3))])
        await js.add_stream(name=narrow, subjects=[f"{stem}.n.>"])

    parts = teb.TopicOptions(partitions=3)
    with trio.fail_after(60):
        await on_server(nats_url, setup)
        try:
            async with teb.open_bus(config(nats_url, streams="existing")) as bus:
                await bus.configure_topic(topic, parts)
                await bus.subscribe(topic, handler, group="svc")
                for i in range(total):
                    await bus.publish(topic, b"%d" % i, key=f"k{i % 6}")
                await done.wait()
                with pytest.raises(teb.InvalidOptionError, match="does not capture") as info:
                    await bus.configure_topic(other, parts)

            async def facts(js: Any) -> tuple[int, list[str]]:
                state = await js.stream_info(wide, subjects_filter=">")
                return state.state.messages, sorted(state.state.subjects or {})

            stored, subjects = await on_server(nats_url, facts)
        finally:
            await _drop(nats_url, wide, narrow)
    assert all(seq == sorted(seq) for seq in handled.values())
    assert stored == total
    assert subjects == [f"{p}.{topic}" for p in range(3)]  # keyed messages went to the partition subjects
    assert "<partition>" in str(info.value)
    print(f"sent {total}, handled {sum(map(len, handled.values()))}, partition subjects {subjects}")


@pytest.mark.nats
async def test_a_found_stream_keeps_its_settings_with_one_warning(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream of the topic's own name that the bus did not make (the Go per-topic layout) is used as it is:
    the topic's options are not applied, one WARNING names the differences."""
    caplog.set_level(logging.WARNING, logger="trio_eventbus.nats")
    topic = topic_name("kept")
    name = stream_of(topic)
    with trio.fail_after(30):
        await on_server(nats_url, lambda js: js.add_stream(name=name, subjects=[topic], max_age=3600))
        try:
            async with teb.open_bus(config(nats_url, streams="existing_or_per_topic")) as bus:
                await bus.configure_topic(topic, teb.TopicOptions(max_age=60, max_messages=10))
                for i in range(12):
                    await bus.publish(topic, b"%d" % i)
                await bus.flush()
            info = await on_server(nats_url, lambda js: js.stream_info(name))
        finally:
            await _drop(nats_url, name)
    warnings = [r.getMessage() for r in caplog.records if "does not manage" in r.getMessage()]
    assert len(warnings) == 1
    assert "max_age: 3600 (options: 60)" in warnings[0]
    assert (info.config.max_age, info.config.max_msgs, info.state.messages) == (3600, -1, 12)
    assert OWNER[0] not in (info.config.metadata or {})
    print(warnings[0])


@pytest.mark.nats
async def test_existing_or_per_topic_creates_the_topic_stream_and_manages_it(nats_url: str) -> None:
    topic = topic_name("own")
    with trio.fail_after(30):
        try:
            async with teb.open_bus(config(nats_url, streams="existing_or_per_topic")) as bus:
                await bus.publish(topic, b"first", confirm=True)
                created = await on_server(nats_url, lambda js: js.stream_info(stream_of(topic)))
            async with teb.open_bus(config(nats_url, streams="existing_or_per_topic")) as bus:
                await bus.configure_topic(topic, teb.TopicOptions(max_messages=5))  # found, but its own: updated
                updated = await on_server(nats_url, lambda js: js.stream_info(stream_of(topic)))
        finally:
            await _drop(nats_url, stream_of(topic))
    assert created.config.subjects == [topic]
    assert (created.config.metadata or {}).get(OWNER[0]) == OWNER[1]
    assert created.config.retention == api.RetentionPolicy.LIMITS
    assert updated.config.max_msgs == 5


@pytest.mark.nats
async def test_existing_or_per_topic_uses_a_wildcard_stream_when_there_is_one(nats_url: str) -> None:
    stem = topic_name("either").replace("-", "_")
    foreign, captured, loose = f"GO_{stem}", f"{stem}.go.orders", f"{stem}.py.orders"
    with trio.fail_after(30):
        await on_server(nats_url, lambda js: js.add_stream(name=foreign, subjects=[f"{stem}.go.>"]))
        try:
            async with teb.open_bus(config(nats_url, streams="existing_or_per_topic")) as bus:
                await bus.publish(captured, b"to the Go stream", confirm=True)
                await bus.publish(loose, b"to its own stream", confirm=True)
            owners = await on_server(nats_url, lambda js: _find_all(js, [captured, loose]))
        finally:
            await _drop(nats_url, foreign, stream_of(loose))
    assert owners == [foreign, stream_of(loose)]


async def _find_all(js: Any, subjects: list[str]) -> list[str | None]:
    return [await _find(js, s) for s in subjects]


@pytest.mark.nats
async def test_a_work_queue_stream_already_consumed_is_refused_with_the_reason(nats_url: str) -> None:
    """A work queue gives each message to one consumer: a second group on the Go service's subject is refused."""
    stem = topic_name("wq").replace("-", "_")
    foreign, topic = f"GO_{stem}", f"{stem}.jobs"

    async def setup(js: Any) -> None:
        await js.add_stream(name=foreign, subjects=[f"{stem}.>"], retention=api.RetentionPolicy.WORK_QUEUE)
        await js.add_consumer(foreign, api.ConsumerConfig(durable_name="go-worker", filter_subject=topic))

    async def handler(msg: teb.Message) -> None:
        raise AssertionError("unreachable")

    with trio.fail_after(30):
        await on_server(nats_url, setup)
        try:
            async with teb.open_bus(config(nats_url, streams="existing")) as bus:
                await bus.publish(topic, b"job", confirm=True)  # publishing into it is fine
                with pytest.raises(teb.InvalidOptionError, match="work-queue stream") as info:
                    await bus.subscribe(topic, handler, group="svc")
        finally:
            await _drop(nats_url, foreign)
    print(info.value)
