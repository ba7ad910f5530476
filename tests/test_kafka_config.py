"""Kafka backend configuration, authentication and topic provisioning, against real brokers (marker ``kafka``).

SASL/PLAIN tests use the broker ``kafka_sasl_server``; the others the shared ``kafka_bootstrap`` or no broker.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
from kafka_helpers import config, unique

import trio_eventbus as teb
from trio_eventbus.backends import BackendFeatures
from trio_eventbus.backends.kafka.config import KafkaConfig
from trio_eventbus.testing.fixtures import KAFKA_SASL_PASSWORD, KAFKA_SASL_USER
from trio_eventbus.testing.servers import KafkaServer, free_port

pytestmark = pytest.mark.kafka


def sasl_config(server: KafkaServer, mechanism: str, password: str) -> KafkaConfig:
    return config(
        server.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username=KAFKA_SASL_USER,
        sasl_password=password,
    )


async def test_sasl_wrong_password_is_a_clear_backend_unavailable(kafka_sasl_server: KafkaServer) -> None:
    cfg = sasl_config(kafka_sasl_server, "PLAIN", "not-the-password")
    with trio.fail_after(60), pytest.raises(teb.BackendUnavailable, match="authentication failed") as info:
        async with teb.open_bus(cfg):
            pytest.fail("the bus must not open")
    assert "not-the-password" not in str(info.value)
    assert type(info.value.__cause__).__name__ == "SaslAuthenticationFailed"
    assert "not-the-password" not in repr(cfg)


async def test_sasl_unsupported_mechanism_is_named(kafka_sasl_server: KafkaServer) -> None:
    cfg = sasl_config(kafka_sasl_server, "SCRAM-SHA-256", KAFKA_SASL_PASSWORD)
    with trio.fail_after(60), pytest.raises(teb.BackendUnavailable, match="SCRAM-SHA-256"):
        async with teb.open_bus(cfg):
            pytest.fail("the bus must not open")


async def test_sasl_right_password_publishes_and_consumes(kafka_sasl_server: KafkaServer) -> None:
    cfg = sasl_config(kafka_sasl_server, "PLAIN", KAFKA_SASL_PASSWORD)
    topic = unique("sasl")
    got: list[teb.Message] = []
    arrived = trio.Event()
    with trio.fail_after(60):
        async with teb.open_bus(cfg, options=teb.BusOptions(service=unique("g"))) as bus:

            async def handler(msg: teb.Message) -> None:
                got.append(msg)
                arrived.set()

            await bus.subscribe(topic, handler)
            await bus.publish(topic, b"secret stuff", key="k", confirm=True)
            await arrived.wait()
    assert [m.data for m in got] == [b"secret stuff"]


async def test_unreachable_broker_is_backend_unavailable() -> None:
    cfg = config(f"127.0.0.1:{free_port()}", request_timeout_ms=5000)
    with trio.fail_after(30), pytest.raises(teb.BackendUnavailable, match="cannot connect") as info:
        async with teb.open_bus(cfg):
            pytest.fail("the bus must not open")
    assert info.value.__cause__ is not None


async def test_topic_provisioning_policy(kafka_bootstrap: str) -> None:
    """Missing topics are created with TopicOptions' partitions; an existing topic with another partition
    count is reported, not altered; create_topics=False requires existing topics; ephemeral is refused."""
    topic = unique("prov")
    with trio.fail_after(60):
        async with teb.open_bus(config(kafka_bootstrap)) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(partitions=3, max_age=3600))
            assert bus.statistics().backend.topics == {topic: 3}
            with pytest.raises(teb.InvalidOptionError, match="ephemeral"):
                await bus.configure_topic(unique("eph"), teb.TopicOptions(persistent=False))
            with pytest.raises(teb.InvalidOptionError, match="replication"):
                await bus.configure_topic(unique("rf"), teb.TopicOptions(replicas=3))
        async with teb.open_bus(config(kafka_bootstrap, create_topics=False)) as bus:
            await bus.configure_topic(topic, teb.TopicOptions(partitions=5))
            backend = bus.statistics().backend
            assert backend.topics == {topic: 3}
            assert backend.partition_mismatches == {topic: (3, 5)}
            with pytest.raises(teb.BackendUnavailable, match="does not exist"):
                await bus.publish(unique("missing"), b"x")
            await bus.publish(topic, b"x", confirm=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bootstrap_servers": ""}, "host:port"),
        ({"bootstrap_servers": "localhost"}, "host:port"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "sasl_mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "sasl_password"),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}, "SASL_PLAINTEXT"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"ssl_cafile": "/ca.pem"}, "SSL"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_certfile"),
        ({"acks": 1}, "acks='all'"),
        ({"acks": "some"}, "acks"),
        ({"compression": "lz5"}, "compression"),
        ({"max_poll_records": 0}, "max_poll_records"),
        ({"linger_ms": -1}, "linger_ms"),
        ({"session_timeout_ms": 1000, "heartbeat_interval_ms": 3000}, "heartbeat"),
        ({"commit_interval": 0}, "commit_interval"),
        ({"pause_threshold": 0}, "pause_threshold"),
        ({"bridge": "greenlet"}, "bridge"),
        ({"create_topics": "yes"}, "create_topics"),
        ({"client_options": {"group_id": "x"}}, "set by the backend"),
    ],
)
def test_invalid_configs_are_refused(kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"bootstrap_servers": "127.0.0.1:9092"} | kwargs
    with pytest.raises(teb.InvalidOptionError, match=match):
        KafkaConfig(**kwargs)


def test_config_checks_client_options_and_hides_secrets() -> None:
    cfg = KafkaConfig(
        bootstrap_servers="a:1, b:2",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="me",
        sasl_password="hunter2",
        client_options={"metadata_max_age_ms": 1000},
        consumer_options={"isolation_level": "read_committed"},
    )
    assert cfg.bootstrap_servers == ("a:1", "b:2")
    assert "hunter2" not in repr(cfg)
    assert "'***'" in repr(cfg)
    cfg.create_backend()
    evolved = attrs.evolve(cfg, client_options={"no_such_option": 1})
    with pytest.raises(teb.InvalidOptionError, match="no_such_option"):
        evolved.create_backend()
    with pytest.raises(teb.InvalidOptionError, match="isolation_level"):
        attrs.evolve(cfg, consumer_options={}, producer_options={"isolation_level": "x"}).create_backend()
    assert KafkaConfig(bootstrap_servers="h:1").create_backend().features == BackendFeatures(
        persistent=True,
        consumer_groups=True,
        ordered_per_key=True,
        redelivers=False,
        dedupes=False,
        ephemeral_topics=False,
    )
