"""The NATS backend's own protocol path (``backends/nats/protocol.py``): the same bytes and headers as nats-py.

Unit tests compare :func:`command` with what nats-py's ``publish`` writes and :func:`parse_headers` with what
nats-py's parser makes of a header block; broker tests run the bus over nats-py's public API (the fallback
when its internals are missing) and check that a failing handler cannot break the connection's reader.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio
from nats.aio.client import Client
from nats_helpers import config, on_server, stream_of, topic_name

import trio_eventbus as teb
from trio_eventbus.backends.nats import protocol
from trio_eventbus.backends.nats.protocol import command, parse_headers, wire_for

HEADER_BLOCKS = [
    b"NATS/1.0\r\nX-Message-Key: k1\r\nNats-Pin-Id: 4Wq6Hq2L1ZbW0pA9vXy3Kc\r\n\r\n",
    b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 500\r\nNats-Pending-Bytes: 0\r\n\r\n",
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1016\r\nNats-Last-Stream: 1024\r\n\r\n",
    b"NATS/1.0 409 Message Size Exceeds MaxBytes\r\n\r\n",
    b"NATS/1.0 423 Nats-Wrong-Pin-Id\r\n\r\n",
    b"NATS/1.0 4xx odd\r\nK: v\r\n\r\n",
    b"NATS/1.0\r\nA:B\r\nC:\tD \r\n bad name: x\r\nno-colon\r\nA: again\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
    b"NATS/1.0\r\n\xc3\xa9t\xc3\xa9: x\r\nv: \xc3\xa9\xff\r\n\r\n",
    b"NATS/1.0\r\n\x1cK: v\r\nK\x1f: w\r\n\x01Ctl: x\r\nTab\tKey: y\r\n\x0bV: \x0b z \x1c\r\n\r\n",
    b"NATS/1.0\r\nEmpty:\r\n: no name\r\nK:  \t spaced \t \r\n\r\n",
]


@pytest.mark.parametrize("raw", HEADER_BLOCKS)
async def test_parse_headers_gives_what_nats_py_gives(raw: bytes) -> None:
    expected = await Client()._process_headers(raw)
    got = parse_headers(raw)
    print(raw[:40], got)
    assert got == expected


MESSAGES: list[tuple[str, str, bytes, dict[str, str] | None]] = [
    ("orders", "", b"x" * 256, None),
    ("orders.eu", "_INBOX.abc.17", b"", None),
    ("orders", "_INBOX.abc.18", b'{"n":1}', {"X-Message-Key": "k1", "Nats-Msg-Id": "e-1"}),
    ("orders", "", b"body", {" Padded ": "  spaced value ", "X-CR": "a\rb\nc", "": "skipped"}),
    ("orders", "r", b"\xff\x00\r\n", {"Unicode": "caf\u00e9 \u2603"}),
]


@pytest.mark.parametrize(("subject", "reply", "body", "headers"), MESSAGES)
async def test_command_writes_what_nats_py_publish_writes(
    subject: str, reply: str, body: bytes, headers: dict[str, str] | None
) -> None:
    nc = Client()
    written: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        written.append(cmd)

    nc._send_command = capture  # type: ignore[method-assign]
    await nc._send_publish(subject, reply, body, len(body), headers)
    ours = command(subject, reply, body, headers)
    print(ours[:80])
    assert written == [ours]


@pytest.mark.parametrize(
    ("subject", "reply", "headers"),
    [("a b", "", None), ("", "", None), ("a", "r r", None), ("a", "r\r\n", None), ("a", "", {"bad name": "v"})],
)
def test_command_refuses_what_would_break_the_protocol_line(
    subject: str, reply: str, headers: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError, match="invalid"):
        command(subject, reply, b"x", headers)


# ------------------------------------------------------------------------------------------------ broker


@pytest.mark.nats
async def test_the_public_api_fallback_publishes_consumes_and_acks(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without nats-py's internals the backend uses ``subscribe(cb=...)`` and ``publish``: same outcome."""
    monkeypatch.setattr(protocol, "_supported", lambda nc: False)
    topic = topic_name("fallback")
    count = 300
    handled: list[int] = []
    done = trio.Event()

    async def handler(msg: teb.Message) -> None:
        handled.append(int(msg.data))
        if len(set(handled)) == count:
            done.set()

    with trio.fail_after(60):
        async with teb.open_bus(config(nats_url), options=teb.BusOptions(service="svc")) as bus:
            await bus.subscribe(topic, handler)
            for i in range(count):
                await bus.publish(topic, b"%d" % i, key=f"k{i % 7}")
            await bus.flush()
            await done.wait()
            await bus.wait_idle()
            stats = bus.statistics()

        async def pending(js: Any) -> int:
            info = await js.consumer_info(stream_of(topic), "svc")
            return int(info.num_ack_pending) + int(info.num_pending)

        left = await on_server(nats_url, pending)
    print(f"published {stats.published} handled {len(handled)} distinct {len(set(handled))} left on server {left}")
    assert stats.published == count
    assert sorted(set(handled)) == list(range(count))
    assert left == 0  # every ack reached the server


@pytest.mark.nats
async def test_a_handler_that_raises_does_not_break_the_connection(nats_url: str) -> None:
    """The router logs a handler's exception; the reader goes on and the next message arrives."""
    got: list[bytes] = []

    async def main() -> tuple[list[bytes], bool]:
        nc = Client()
        await nc.connect(nats_url, allow_reconnect=False)
        try:
            second = asyncio.Event()

            def handler(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
                got.append(data)
                if data == b"boom":
                    raise RuntimeError("a bug in a handler")
                second.set()

            wire = wire_for(nc)
            await wire.subscribe("teb-proto-raise", handler)
            await wire.send([command("teb-proto-raise", "", body, None) for body in (b"boom", b"ok")])
            await asyncio.wait_for(second.wait(), 10)
            return got, nc.is_connected
        finally:
            await nc.close()

    def run() -> tuple[list[bytes], bool]:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(main())

    with trio.fail_after(30):
        received, connected = await trio.to_thread.run_sync(run)
    print(f"received {received} connected {connected}")
    assert received == [b"boom", b"ok"]
    assert connected
