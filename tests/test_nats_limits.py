"""The NATS backend at its limits: held backlogs older than ``ack_wait``, large messages, ``max_payload``, old servers.

Broker tests (marker ``nats``) run against real nats-servers; each has a ``trio.fail_after`` and prints its
figures. The server-version refusal runs against a minimal stand-in that speaks only the NATS greeting
(``INFO``/``CONNECT``/``PING``), since no old nats-server is provisioned.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from nats_helpers import config, on_server, stream_of, topic_name

import trio_eventbus as teb
from trio_eventbus.backends.nats import consume
from trio_eventbus.backends.nats.wire import MIN_SERVER_VERSION, server_version_error, too_large
from trio_eventbus.testing.conformance import envelope, seq_of
from trio_eventbus.testing.servers import NatsServer

GROUP = "workers"


def _nats_stats(bus: teb.EventBus) -> teb.NatsStatistics:
    stats = bus.statistics().backend
    assert isinstance(stats, teb.NatsStatistics)
    return stats


# ------------------------------------------------------------------------------------- held messages


@pytest.mark.nats
async def test_backlog_older_than_ack_wait_is_handled_once_in_order(nats_url: str) -> None:
    """12 envelopes of one aggregate wait in one lane behind a 0.5 s handler for up to 6 s with ack_wait=2:
    progress acks keep them all alive, so JetStream redelivers none (without them: 23 handlings)."""
    topic = topic_name("held")
    handled: list[int] = []
    done = trio.Event()
    with trio.fail_after(60):
        async with teb.open_bus(config(nats_url, ack_wait=2.0)) as bus:
            for n in range(12):
                await bus.publish_envelope(topic, envelope("agg", n), confirm=True)

            async def handler(env: teb.Envelope) -> None:
                await trio.sleep(0.5)  # the handler's own work: a slow downstream call
                handled.append(seq_of(env))
                if len(handled) == 12:
                    done.set()

            started = time.monotonic()
            await bus.subscribe_envelope(topic, handler, group=GROUP)
            await done.wait()
            elapsed = time.monotonic() - started
            stats = _nats_stats(bus).subscription_details[0]
        info = await on_server(nats_url, lambda js: js.consumer_info(stream_of(topic), GROUP))
    print(
        f"handled={len(handled)} distinct={len(set(handled))} elapsed={elapsed:.1f}s "
        f"progress_acks={stats.progress_acks} redelivered_held={stats.redelivered_held} "
        f"server: deliveries={info.delivered.consumer_seq} ack_pending={info.num_ack_pending}"
    )
    assert handled == list(range(12))
    assert info.delivered.consumer_seq == 12  # the server never redelivered: nothing was even dropped here
    assert info.num_ack_pending == 0
    assert stats.redelivered_held == 0
    assert stats.progress_acks > 0


@pytest.mark.nats
async def test_redelivery_of_a_held_message_is_dropped_and_logged(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress acks that never reach the server (turned off here, as a long disconnect would) let JetStream
    redeliver held messages: the copies are recognised by stream sequence and dropped, with a WARNING
    naming ack_wait; every message is still handled exactly once and in order."""

    async def lost(self: consume.Puller) -> None:
        self._progressing = False  # the pass "ran", but nothing reached the server

    monkeypatch.setattr(consume.Puller, "keep_alive", lost)
    caplog.set_level(logging.WARNING, logger="trio_eventbus.nats")
    topic = topic_name("held-lost")
    handled: list[int] = []
    done = trio.Event()
    with trio.fail_after(60):
        async with teb.open_bus(config(nats_url, ack_wait=1.0)) as bus:
            for n in range(6):
                await bus.publish_envelope(topic, envelope("agg", n), confirm=True)

            async def handler(env: teb.Envelope) -> None:
                await trio.sleep(0.5)
                handled.append(seq_of(env))
                if len(handled) == 6:
                    done.set()

            await bus.subscribe_envelope(topic, handler, group=GROUP)
            await done.wait()
        stats = _nats_stats(bus).subscription_details[0]  # after close: every delivery received is counted
        info = await on_server(nats_url, lambda js: js.consumer_info(stream_of(topic), GROUP))
    warnings = [r.getMessage() for r in caplog.records if "while it was still held here" in r.getMessage()]
    print(
        f"handled={handled} redelivered_held={stats.redelivered_held} server deliveries={info.delivered.consumer_seq} "
        f"ack_pending={info.num_ack_pending} warnings={len(warnings)}"
    )
    assert handled == list(range(6))
    assert stats.redelivered_held > 0  # the server did redeliver (3 s of backlog, ack_wait 1 s) ...
    assert info.delivered.consumer_seq == 6 + stats.redelivered_held
    assert info.num_ack_pending == 0  # ... and the original deliveries' acks settled every message
    assert warnings
    assert "raise NatsConfig.ack_wait" in warnings[0]


# ------------------------------------------------------------------------------------- large messages


@pytest.mark.nats
async def test_large_messages_are_consumed_with_defaults_without_a_disconnect(nats_url: str) -> None:
    """1,500 messages of 700 KB (1 GB) with the default fetch_batch=500: pull requests bounded by
    fetch_max_bytes keep the server's in-flight bytes under its slow-consumer limit (without: a loop of
    slow-consumer disconnects)."""
    topic = topic_name("large")
    count, size = 1_500, 700 * 1024
    seen: set[int] = set()
    done = trio.Event()
    body = bytes(size - 8)
    with trio.fail_after(240):
        async with teb.open_bus(config(nats_url)) as bus:
            started = time.monotonic()
            for n in range(count):
                await bus.publish(topic, n.to_bytes(8, "big") + body, key=f"k{n % 16}", confirm=n == count - 1)
            published = time.monotonic() - started

            async def handler(message: teb.Message) -> None:
                seen.add(int.from_bytes(message.data[:8], "big"))
                if len(seen) == count:
                    done.set()

            started = time.monotonic()
            await bus.subscribe(topic, handler, group=GROUP)
            await done.wait()
            consumed = time.monotonic() - started
            stats = _nats_stats(bus)
    sub = stats.subscription_details[0]
    print(
        f"messages={count} x {size} B: published in {published:.1f}s, consumed in {consumed:.1f}s "
        f"({count * size / consumed / 1e6:.0f} MB/s); handled={len(seen)} disconnects={stats.disconnects} "
        f"reconnects={stats.reconnects} connection_errors={stats.connection_errors} "
        f"pull_requests={sub.pull_requests} received={sub.received} consumer_recoveries={sub.consumer_recoveries}"
    )
    assert len(seen) == count
    assert stats.disconnects == 0
    assert stats.reconnects == 0
    assert stats.connection_errors == 0
    assert sub.received == count
    assert sub.consumer_recoveries == 0  # every request ended with a status the puller expects


@pytest.mark.nats
async def test_filled_pull_requests_end_normally(nats_url: str) -> None:
    """A backlog larger than the requests: the server ends each filled request (it carries max_bytes) with
    ``409 Batch Completed``, which must not make the puller re-create its consumer as other 409s do. (Requests
    ended by ``409 Message Size Exceeds MaxBytes``: the large-message test.)"""
    topic = topic_name("statuses")
    count = 2_000
    seen: set[int] = set()
    done = trio.Event()
    with trio.fail_after(60):
        async with teb.open_bus(config(nats_url, fetch_batch=100)) as bus:
            for n in range(count):
                await bus.publish(topic, n.to_bytes(4, "big") + bytes(200), confirm=n == count - 1)

            async def handler(message: teb.Message) -> None:
                seen.add(int.from_bytes(message.data[:4], "big"))
                if len(seen) == count:
                    done.set()

            await bus.subscribe(topic, handler, group=GROUP)
            await done.wait()
            sub = _nats_stats(bus).subscription_details[0]
    print(
        f"handled={len(seen)} pull_requests={sub.pull_requests} consumer_recoveries={sub.consumer_recoveries} "
        f"vanished={sub.vanished_pull_requests}"
    )
    assert len(seen) == count
    assert sub.consumer_recoveries == 0
    assert sub.vanished_pull_requests == 0


@pytest.fixture
def small_payload_server(tmp_path: Path) -> Any:
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 65536\n")
    server = NatsServer(extra_args=["-c", str(conf)])
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.nats
async def test_message_over_max_payload_fails_alone_and_the_bus_keeps_running(small_payload_server: NatsServer) -> None:
    """A server with max_payload=64 KiB, the bus allowing 1 MiB: a message whose body fits but whose headers
    push it over (the server would close the connection) and one whose body alone is too large both fail
    with a PublishError; the messages around them in the same batch go through; no reconnect."""
    topic = topic_name("payload")
    limit = 65536
    handled: list[str] = []
    got_all = trio.Event()
    options = teb.BusOptions(max_message_bytes=1024 * 1024)
    with trio.fail_after(60):
        async with teb.open_bus(config(small_payload_server.url), options=options) as bus:

            async def handler(message: teb.Message) -> None:
                handled.append(message.data.decode())
                if len(handled) == 3:
                    got_all.set()

            await bus.subscribe(topic, handler, group=GROUP)
            with pytest.raises(teb.PublishError, match="max_payload") as refused:
                await bus.publish(topic, bytes(limit - 10), key="k", confirm=True)  # headers push it over
            assert isinstance(refused.value.__cause__, teb.MessageTooLargeError)
            with pytest.raises(teb.PublishError):
                await bus.publish(topic, bytes(limit + 10), confirm=True)  # the body alone is too large
            bus.publish_nowait(topic, b"before")  # one batch (no checkpoint between), the big one inside
            bus.publish_nowait(topic, bytes(limit - 10), key="k")
            bus.publish_nowait(topic, b"after")
            await bus.publish(topic, b"next", confirm=True)
            await got_all.wait()
            stats = _nats_stats(bus)
            failed = bus.statistics().publish_failed
    print(
        f"handled={handled} failed: bus={failed} backend={stats.publish_failed} "
        f"disconnects={stats.disconnects} reconnects={stats.reconnects}"
    )
    assert handled == ["before", "after", "next"]
    assert stats.publish_failed == failed == 3
    assert stats.disconnects == 0
    assert stats.reconnects == 0
    assert stats.state == "connected"


def test_size_check_counts_the_header_block() -> None:
    assert too_large(bytes(100), None, 100) == 0
    assert too_large(bytes(101), None, 100) == 101
    headers = {"X-Message-Key": "k"}  # NATS/1.0\r\n + "X-Message-Key: k\r\n" + \r\n = 10 + 18 + 2
    assert too_large(bytes(70), headers, 100) == 0
    assert too_large(bytes(71), headers, 100) == 101
    assert too_large(b"", {"X": "é" * 60}, 100) == 10 + 1 + 2 + 120 + 2 + 2  # UTF-8 bytes, not characters


# ------------------------------------------------------------------------------------- server version


def test_server_version_check() -> None:
    assert server_version_error("2.11.0", "s") is None
    assert server_version_error("2.15.2", "s") is None
    assert server_version_error("3.0.0-beta.1", "s") is None
    for old in ("2.10.24", "2.9.10", "", "weird"):
        error = server_version_error(old, "nats://h:1")
        assert isinstance(error, teb.BackendUnavailable)
        assert "needs 2.11.0 or newer" in str(error)
    assert MIN_SERVER_VERSION == (2, 11, 0)


async def test_a_server_older_than_the_minimum_is_refused_at_connect() -> None:
    """A stand-in server greeting as nats-server 2.9.10: ``open_bus`` raises BackendUnavailable naming the
    version found and the minimum, and nothing is left running."""
    info = b'INFO {"server_id":"old","version":"2.9.10","proto":1,"headers":true,"max_payload":1048576}\r\n'

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(info)
            buffer = b""
            while data := await stream.receive_some():
                buffer += data
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    if line.startswith(b"PING"):
                        await stream.send_all(b"PONG\r\n")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(teb.BackendUnavailable, match=r"nats-server 2\.9\.10; .* needs 2\.11\.0 or newer"):
                async with teb.open_bus(config(f"nats://127.0.0.1:{port}", bridge="thread")):
                    pass  # pragma: no cover - refused
            nursery.cancel_scope.cancel()
