"""Topic provisioning is single-flight: concurrent first uses of a topic reach the backend once.

Through the public API (``teb.open_bus`` over a FakeBackend whose ``ensure_topic`` the test holds on a gate)
and, for the cancellation hand-over, on ``TopicRegistry`` directly.
"""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._topics import TopicRegistry
from trio_eventbus.testing.fake import FakeBackend, FakeConfig


async def test_concurrent_first_publishes_provision_the_topic_once() -> None:
    backend = FakeBackend(auto_ack=True)
    backend.ensure_gate = gate = trio.Event()
    async with teb.open_bus(FakeConfig(backend)) as bus:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(bus.publish, "new", b"%d" % i)
            nursery.start_soon(functools.partial(bus.subscribe, "new", _ignore, group="svc"))
            await trio.testing.wait_all_tasks_blocked()
            assert backend.ensure_calls["new"] == 1  # one provisions, ten wait for its verdict
            assert backend.sent == []
            gate.set()
        assert backend.ensure_calls["new"] == 1
        await backend.wait_sent(10)  # the publishes returned once queued; the publisher task sends them
        assert len(backend.sent) == 10
        await bus.publish("new", b"later", confirm=True)  # a ready topic: no further call
        assert backend.ensure_calls["new"] == 1


async def test_a_failed_provisioning_reaches_every_waiter_and_the_next_caller_retries() -> None:
    backend = FakeBackend(auto_ack=True)
    backend.ensure_gate = gate = trio.Event()
    failure = teb.BackendUnavailable("broker said no")
    backend.fail_next_ensure("flaky", failure)
    errors: list[BaseException] = []

    async def publish(bus: teb.EventBus) -> None:
        try:
            await bus.publish("flaky", b"x")
        except teb.BackendUnavailable as exc:
            errors.append(exc)

    async with teb.open_bus(FakeConfig(backend)) as bus:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(publish, bus)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert errors == [failure] * 5  # the same error, once per waiter
        assert backend.ensure_calls["flaky"] == 1
        assert backend.sent == []
        await bus.publish("flaky", b"again", confirm=True)  # not cached as failed: provisioned anew
        assert backend.ensure_calls["flaky"] == 2
        assert [m.body for m in backend.sent] == [b"again"]


async def test_a_cancelled_provisioner_hands_over_to_a_waiter() -> None:
    backend = FakeBackend()
    backend.ensure_gate = gate = trio.Event()
    registry = TopicRegistry(backend)
    done: list[str] = []

    async def ensure(name: str) -> None:
        await registry.ensure("t")
        done.append(name)

    first = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_in_scope, first, ensure, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ensure, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert backend.ensure_calls["t"] == 1
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert backend.ensure_calls["t"] == 2  # the waiter took over, it did not inherit the Cancelled
        gate.set()
    assert done == ["second"]
    assert "t" in registry.ready


async def test_configure_reprovisions_with_the_new_options_after_an_ensure_in_flight() -> None:
    backend = FakeBackend()
    backend.ensure_gate = gate = trio.Event()
    registry = TopicRegistry(backend)
    options = teb.TopicOptions(partitions=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.ensure, "t")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(registry.configure, "t", options)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.ensured == [("t", teb.TopicOptions())]  # configure waits for the attempt in flight
        gate.set()
    assert backend.ensured == [("t", teb.TopicOptions()), ("t", options)]
    assert registry.options("t") == options


async def test_invalid_topic_raises_before_reaching_the_backend() -> None:
    backend = FakeBackend()
    registry = TopicRegistry(backend)
    with pytest.raises(teb.InvalidTopicError):
        await registry.ensure("a b")
    assert backend.ensured == []


async def _in_scope(scope: trio.CancelScope, fn: object, *args: object) -> None:
    with scope:
        await fn(*args)  # type: ignore[operator]


async def _ignore(msg: teb.Message) -> None:
    return None
