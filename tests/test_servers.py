"""The local broker managers and fixtures (trio_eventbus.testing.servers / .fixtures) against real brokers.

These tests drive the brokers with the plain asyncio clients (nats-py, aiokafka) under ``asyncio.run``, so a
failure here is about the broker processes, never about the bus. Every client call is bounded by
``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from trio_eventbus.testing import servers
from trio_eventbus.testing.fixtures import KAFKA_SASL_PASSWORD, KAFKA_SASL_USER
from trio_eventbus.testing.servers import BrokerStartError, KafkaServer, NatsServer

TIMEOUT = 30.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _quiet_nats_error(exc: Exception) -> None:
    """nats-py logs connection errors through this callback; the tests assert on the raised error."""


async def _nats_connect(url: str, **kwargs: Any) -> Any:
    """nats-py client without reconnects; closed again when connecting fails (nats-py would leak it)."""
    from nats.aio.client import Client

    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=_quiet_nats_error, **kwargs)
    except BaseException:
        await nc.close()
        raise
    return nc


def test_free_port_is_bindable() -> None:
    port = servers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_kafka_libs_name_the_provision_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEB_KAFKA_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(BrokerStartError, match=r"run `python tools/provision.py` \(needs java and mvn\)"):
        servers.locate_kafka_libs()


def test_missing_nats_server_names_the_provision_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TEB_NATS_SERVER", raising=False)
    monkeypatch.setenv("TEB_NATS_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(BrokerStartError, match=r"run `python tools/provision.py` \(builds it with Go"):
        servers.locate_nats_server()


# ----------------------------------------------------------------------------------------------- NATS


@pytest.mark.nats
def test_nats_jetstream_stream_survives_restart(nats_server: NatsServer) -> None:
    stream, subject = _unique("TEB").replace("-", "_"), _unique("teb.smoke")

    async def publish() -> int:
        async with asyncio.timeout(TIMEOUT):
            nc = await _nats_connect(nats_server.url)
            try:
                js = nc.jetstream(timeout=10)
                await js.add_stream(name=stream, subjects=[subject])
                seq = 0
                for i in range(10):
                    seq = (await js.publish(subject, f"m{i}".encode())).seq
                return seq
            finally:
                await nc.close()

    async def read_back() -> tuple[int, bytes]:
        async with asyncio.timeout(TIMEOUT):
            nc = await _nats_connect(nats_server.url)
            try:
                js = nc.jetstream(timeout=10)
                info = await js.stream_info(stream)
                last = await js.get_msg(stream, seq=10)
                return info.state.messages, last.data
            finally:
                await nc.close()

    assert asyncio.run(publish()) == 10
    url = nats_server.url
    nats_server.restart()
    assert nats_server.url == url
    assert asyncio.run(read_back()) == (10, b"m9")


@pytest.mark.nats
def test_nats_stop_refuses_connections_until_started(nats_server: NatsServer) -> None:
    nats_server.stop()
    assert not nats_server.running
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", nats_server.port), timeout=2),
    ):
        pass
    nats_server.start()

    async def ping() -> None:
        async with asyncio.timeout(TIMEOUT):
            nc = await _nats_connect(nats_server.url)
            await nc.flush()
            await nc.close()

    asyncio.run(ping())


@pytest.mark.nats
def test_nats_close_removes_process_and_store() -> None:
    with NatsServer() as server:
        store = server.store_dir
        assert store is not None
        assert store.is_dir()
        proc = server._proc
    assert not server.running
    assert proc is not None
    assert proc.proc is None
    assert not store.parent.exists()
    with pytest.raises(RuntimeError, match="closed"):
        server.start()


@pytest.mark.nats
def test_nats_start_failure_raises_with_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(port=taken.getsockname()[1])
        try:
            with pytest.raises(BrokerStartError, match=r"(?i)address already in use"):
                server.start()
            assert not server.running
        finally:
            server.close()


@pytest.mark.nats
def test_nats_auth_server_checks_password(nats_auth_server: NatsServer) -> None:
    import nats.errors

    assert nats_auth_server.user is not None
    assert nats_auth_server.password is not None

    async def connect(password: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            nc = await _nats_connect(nats_auth_server.url, user=nats_auth_server.user, password=password)
            await nc.flush()
            await nc.close()

    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        asyncio.run(connect("wrong-password"))
    asyncio.run(connect(nats_auth_server.password))


@pytest.mark.nats
def test_nats_url_fixture_serves_jetstream(nats_url: str) -> None:
    async def account() -> int:
        async with asyncio.timeout(TIMEOUT):
            nc = await _nats_connect(nats_url)
            try:
                info = await nc.jetstream(timeout=10).account_info()
                return int(info.limits.max_streams)
            finally:
                await nc.close()

    assert asyncio.run(account()) != 0


# ---------------------------------------------------------------------------------------------- Kafka


async def _create_topic(bootstrap: str, topic: str, **client: Any) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: list[bytes], **client: Any) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client)
    try:
        await producer.start()
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, count: int, group: str | None = None) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    got: list[bytes] = []
    try:
        await consumer.start()
        while len(got) < count:
            batches = await consumer.getmany(timeout_ms=1000)
            got += [record.value for records in batches.values() for record in records]
        if group is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


@pytest.mark.kafka
def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = _unique("teb-smoke")
    values = [f"v{i}".encode() for i in range(5)]

    async def round_trip() -> list[bytes]:
        async with asyncio.timeout(TIMEOUT * 2):
            await _create_topic(kafka_bootstrap, topic)
            await _produce(kafka_bootstrap, topic, values)
            return await _consume(kafka_bootstrap, topic, len(values), group=_unique("teb-group"))

    assert asyncio.run(round_trip()) == values


@pytest.mark.kafka
def test_kafka_records_survive_restart(kafka_server: KafkaServer) -> None:
    topic = _unique("teb-restart")
    values = [b"before-1", b"before-2"]

    async def produce() -> None:
        async with asyncio.timeout(TIMEOUT * 2):
            await _create_topic(kafka_server.bootstrap, topic)
            await _produce(kafka_server.bootstrap, topic, values)

    async def consume() -> list[bytes]:
        async with asyncio.timeout(TIMEOUT * 2):
            await _produce(kafka_server.bootstrap, topic, [b"after"])
            return await _consume(kafka_server.bootstrap, topic, 3)

    asyncio.run(produce())
    bootstrap = kafka_server.bootstrap
    kafka_server.restart()
    assert kafka_server.bootstrap == bootstrap
    assert asyncio.run(consume()) == [*values, b"after"]


@pytest.mark.kafka
def test_kafka_sasl_server_checks_password(kafka_sasl_server: KafkaServer, caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka.errors import KafkaConnectionError

    assert kafka_sasl_server.security_protocol == "SASL_PLAINTEXT"
    topic = _unique("teb-sasl")

    def sasl(password: str) -> dict[str, Any]:
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": KAFKA_SASL_USER,
            "sasl_plain_password": password,
        }

    async def produce(password: str) -> None:
        async with asyncio.timeout(TIMEOUT * 2):
            await _produce(kafka_sasl_server.bootstrap, topic, [b"secret"], **sasl(password))

    async def create_and_produce() -> None:
        async with asyncio.timeout(TIMEOUT * 2):
            await _create_topic(kafka_sasl_server.bootstrap, topic, **sasl(KAFKA_SASL_PASSWORD))
            await _produce(kafka_sasl_server.bootstrap, topic, [b"secret"], **sasl(KAFKA_SASL_PASSWORD))

    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        asyncio.run(produce("wrong-password"))
    assert "SaslAuthenticationFailed" in caplog.text
    asyncio.run(create_and_produce())
    # a plaintext client on the SASL port gets no service
    with pytest.raises(KafkaConnectionError):
        asyncio.run(asyncio.wait_for(_produce(kafka_sasl_server.bootstrap, topic, [b"x"]), TIMEOUT))
