"""NATS backend configuration, credentials, names, stream config and statistics (marker ``nats``).

Against the shared ``nats_url`` server, or ``nats_auth_server`` for the credentials tests.
"""

from __future__ import annotations

import pytest
import trio
from nats.js import api
from nats_helpers import bridge_threads, config, on_server, stream_of, topic_name

import trio_eventbus as teb
from trio_eventbus.backends.nats.config import NatsConfig
from trio_eventbus.testing.fixtures import NATS_AUTH_PASSWORD, NATS_AUTH_USER
from trio_eventbus.testing.servers import NatsServer, free_port

pytestmark = pytest.mark.nats


async def test_wrong_credentials_are_refused_with_backend_unavailable(nats_auth_server: NatsServer) -> None:
    url = nats_auth_server.url
    with trio.fail_after(30):
        with pytest.raises(teb.BackendUnavailable, match="refused the credentials") as info:
            async with teb.open_bus(config(url, user=NATS_AUTH_USER, password="wrong")):
                raise AssertionError("unreachable")
        assert "Authorization Violation" in str(info.value.__cause__)
        assert "wrong" not in str(info.value)
        with pytest.raises(teb.BackendUnavailable):
            async with teb.open_bus(config(url)):  # no credentials at all
                raise AssertionError("unreachable")
        got = trio.Event()
        async with teb.open_bus(config(url, user=NATS_AUTH_USER, password=NATS_AUTH_PASSWORD)) as bus:

            async def handler(msg: teb.Message) -> None:
                got.set()

            topic = topic_name("auth")
            await bus.subscribe(topic, handler, group="svc")
            await bus.publish(topic, b"hello")
            await got.wait()


async def test_unreachable_server_is_backend_unavailable() -> None:
    with trio.fail_after(30):
        with pytest.raises(teb.BackendUnavailable, match="cannot connect to NATS"):
            async with teb.open_bus(config(f"nats://127.0.0.1:{free_port()}", reconnect_time_wait=0.05)):
                raise AssertionError("unreachable")
    assert bridge_threads() == []


def test_config_validation_and_secrets() -> None:
    cfg = NatsConfig(servers=["nats://bob:pw-123@host:4222"], user=None, token="tok-456")
    shown = repr(cfg)
    assert "pw-123" not in shown
    assert "tok-456" not in shown
    assert "bob" not in shown
    assert "host:4222" in shown
    shown = repr(NatsConfig(user="u", password="sekret", client_options={"nkeys_seed_str": "SUA..."}))
    assert "sekret" not in shown
    assert "SUA" not in shown
    for bad in (
        {"fetch_batch": 0},
        {"fetch_max_wait": -1},
        {"fetch_max_bytes": 0},
        {"max_pending_publishes": 1.5},
        {"user": "only-user"},
        {"user": "u", "password": "p", "token": "t"},
        {"tls_cert_file": "c.pem"},
        {"max_reconnect_attempts": 0},
        {"stream_prefix": "bad.prefix"},
        {"bridge": "gevent"},
        {"compression": "zstd"},
        {"client_options": {"error_cb": print}},
        {"servers": "http://host"},
        {"servers": []},
    ):
        with pytest.raises(teb.InvalidOptionError):
            NatsConfig(**bad)


async def test_invalid_topic_and_stream_names_are_refused(nats_url: str) -> None:
    stem = topic_name("names")
    foreign = f"FOREIGN_{stem}"
    with trio.fail_after(30):
        await on_server(nats_url, lambda js: js.add_stream(name=foreign, subjects=[f"{stem}.captured.>"]))
        try:
            async with teb.open_bus(config(nats_url)) as bus:
                await bus.publish(f"{stem}.a_b", b"x")
                with pytest.raises(teb.InvalidTopicError, match="share a stream name"):
                    await bus.publish(f"{stem}.a.b", b"x")  # same stream name as .a_b
                with pytest.raises(teb.InvalidTopicError, match="already captures"):
                    await bus.publish(f"{stem}.captured.here", b"x")
                with pytest.raises(teb.InvalidTopicError):
                    await bus.publish(f"{stem}.*", b"x")
                with pytest.raises(teb.InvalidOptionError, match="replicas"):
                    await bus.configure_topic(f"{stem}.replicated", teb.TopicOptions(replicas=3))
                await bus.publish(f"{stem}.a_b", b"still fine", confirm=True)
            async with teb.open_bus(config(nats_url, stream_prefix="P" * 32)) as bus:
                with pytest.raises(teb.InvalidTopicError, match="too long"):
                    await bus.publish("t" + "x" * 240, b"x")
        finally:
            await on_server(nats_url, lambda js: js.delete_stream(foreign))


async def test_topic_options_become_the_stream_config(nats_url: str) -> None:
    topic = topic_name("opts")
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url, stream_max_bytes=10_000_000)) as bus:
            options = teb.TopicOptions(max_age=3600, max_messages=1000, duplicate_window=30)
            await bus.configure_topic(topic, options)
            first = await on_server(nats_url, lambda js: js.stream_info(stream_of(topic)))
            await bus.configure_topic(topic, teb.TopicOptions(max_messages=5, duplicate_window=10))
            second = await on_server(nats_url, lambda js: js.stream_info(stream_of(topic)))
            for i in range(8):
                await bus.publish(topic, b"%d" % i)
            await bus.flush()
            third = await on_server(nats_url, lambda js: js.stream_info(stream_of(topic)))
    c = first.config
    assert (c.subjects, c.max_age, c.max_msgs, c.max_bytes, c.duplicate_window) == (
        [topic],
        3600,
        1000,
        10_000_000,
        30,
    )
    assert c.retention == api.RetentionPolicy.LIMITS
    assert c.storage == api.StorageType.FILE
    assert (second.config.max_msgs, second.config.max_age, second.config.duplicate_window) == (5, 0, 10)
    assert third.state.messages == 5  # discard old


async def test_statistics_show_the_connection(nats_url: str) -> None:
    with trio.fail_after(30):
        async with teb.open_bus(config(nats_url, bridge="thread")) as bus:
            topic = topic_name("stats")
            await bus.publish(topic, b"x", confirm=True)
            backend = bus.statistics().backend
            assert repr(bus).startswith("<EventBus open")
    assert isinstance(backend, teb.NatsStatistics)
    assert backend.bridge == "thread"
    assert backend.state == "connected"
    assert backend.reconnects == 0
    assert backend.pending_outcomes == 0
    assert backend.publish_acked == 1
