"""One header rule for every backend, refused at the call; the bus's own headers cannot be spoofed."""

from __future__ import annotations

import itertools
import os
import string

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_eventbus as teb
from trio_eventbus import _codec
from trio_eventbus._dispatch import dead_letter
from trio_eventbus._envelope import RESERVED_HEADER_PREFIXES, RESERVED_HEADERS, check_key_and_id, freeze_headers

_ids = itertools.count()
TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits

#: Valid on every backend, and each arrives unchanged: names with every punctuation a token allows, values with
#: inner spaces, non-ASCII text, astral characters, the empty value.
EDGE_HEADERS = {
    "!#$%&'*+-.^_`|~": "every token punctuation",
    "Content-Type": "application/json; charset=utf-8",
    "x": "",
    "a.b": "inner  spaces stay",
    "unicode": "grüße — 東京 🚀",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}
EDGE_KEY = "kunde/ä 7:x"
EDGE_ID = "id ü-1"


def topic(stem: str) -> str:
    return f"teb-hd-{stem}-{os.getpid()}-{next(_ids)}"


# -- the rule itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a/b", "a b", "a:b", "", "é", "a\r\nb", "(x)", "a,b", 'a"b', "a=b", "a@b", "a[b]", "a\\b", "{x}", "a?b", 7, None],
)
def test_names_outside_the_token_alphabet_are_refused(name: object) -> None:
    with pytest.raises(teb.InvalidHeaderError, match="invalid header name"):
        freeze_headers({name: "v"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nb",
        "a\nb",
        "a\rb",
        "a\x00b",
        "a\tb",
        "\x7f",
        "a\x85b",
        "a\u2028b",
        "a\u00a0b",
        "\ud800",
        " x",
        "x ",
        " ",
        1,
    ],
)
def test_values_that_would_change_on_some_backend_are_refused(value: object) -> None:
    with pytest.raises(teb.InvalidHeaderError, match="the value"):
        freeze_headers({"k": value})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "name",
    [
        "Nats-Msg-Id",
        "nats-msg-id",
        "NATS-MSG-ID",
        "Nats-Expected-Stream",
        "Nats-Rollup",
        "X-Message-Key",
        "x-message-key",
        "X-Message-ID",
        "X-Content-Encoding",
        "X-Event-ID",
        "x-aggregate-id",
        "X-Event-Type",
        "X-Event-Version",
        "X-Trace-ID",
        "X-Correlation-ID",
        "X-Tenant-ID",
        "X-Payload-Encoding",
        "X-DLQ-Topic",
        "x-dlq-anything",
    ],
)
def test_the_bus_own_headers_are_refused_case_insensitively(name: str) -> None:
    with pytest.raises(teb.InvalidHeaderError, match="reserved"):
        freeze_headers({name: "spoof"})


def test_every_header_the_bus_writes_is_reserved() -> None:
    """The reserved list names what the codec, the dead-letter step and both brokers' wire modules write."""
    from trio_eventbus.backends.kafka import wire as kafka_wire
    from trio_eventbus.backends.nats import wire as nats_wire

    written = [getattr(_codec, n) for n in dir(_codec) if n.startswith("H_")]
    written += [getattr(dead_letter, n) for n in dir(dead_letter) if n.startswith("H_")]
    written += [nats_wire.H_MSG_ID, nats_wire.H_KEY, nats_wire.H_ENCODING]
    written += [kafka_wire.H_MESSAGE_ID, kafka_wire.H_EVENT_ID]
    assert len(written) == 19
    for name in written:
        lower = name.lower()
        assert lower in RESERVED_HEADERS or lower.startswith(RESERVED_HEADER_PREFIXES), name
        with pytest.raises(teb.InvalidHeaderError):
            freeze_headers({name: "x"})


def test_valid_headers_are_copied_read_only() -> None:
    given_headers = dict(EDGE_HEADERS)
    frozen = freeze_headers(given_headers)
    assert frozen == EDGE_HEADERS
    given_headers["later"] = "change"
    assert "later" not in frozen
    with pytest.raises(TypeError):
        frozen["x"] = "y"  # type: ignore[index]
    assert freeze_headers({}) is freeze_headers(None)
    with pytest.raises(teb.InvalidHeaderError, match="mapping"):
        freeze_headers([("a", "b")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "message_id", "match"),
    [
        ("", None, "key '' must not be empty"),
        ("a\nb", None, "key"),
        (" k", None, "key"),
        (7, None, "key"),
        (None, "", "message_id"),
        (None, "   ", "message_id"),
        (None, "id\r\n", "message_id"),
        (None, b"id", "message_id"),
    ],
)
def test_key_and_message_id_follow_the_value_rule(key: object, message_id: object, match: str) -> None:
    with pytest.raises(teb.InvalidHeaderError, match=match):
        check_key_and_id(key, message_id)


@given(
    st.dictionaries(
        st.text(TCHAR, min_size=1, max_size=12).filter(
            lambda n: n.lower() not in RESERVED_HEADERS and not n.lower().startswith(RESERVED_HEADER_PREFIXES)
        ),
        st.text(max_size=20),
        max_size=5,
    )
)
def test_the_rule_is_exactly_printable_and_untrimmed(headers: dict[str, str]) -> None:
    """Any token name is accepted; a value is accepted exactly when NATS would carry it unchanged."""

    def arrives_unchanged_on_nats(value: str) -> bool:  # what nats-py does to a value, and what it can encode
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return value.isprintable() and value.strip().replace("\r", " ").replace("\n", " ") == value

    if all(arrives_unchanged_on_nats(v) for v in headers.values()):
        assert freeze_headers(headers) == headers
    else:
        with pytest.raises(teb.InvalidHeaderError):
            freeze_headers(headers)


# -- at the call, on the bus -------------------------------------------------------------------------------------


async def test_publish_refuses_bad_headers_before_sending_anything() -> None:
    broker = teb.MemoryBroker()
    async with teb.open_bus(teb.MemoryConfig(broker=broker)) as bus:
        name = topic("refused")
        for headers in ({"a/b": "x"}, {"k": "x\ny"}, {"Nats-Msg-Id": "dup"}, {"X-Message-Key": "k2"}):
            with pytest.raises(teb.InvalidHeaderError):
                await bus.publish(name, b"x", headers=headers)
        with pytest.raises(teb.InvalidHeaderError):
            await bus.publish(name, b"x", key="bad\nkey")
        with pytest.raises(teb.InvalidEnvelopeError):  # the base class still catches them
            await bus.publish(name, b"x", message_id=" x")
        await bus.flush()
        stats = bus.statistics()
        assert (stats.published, stats.publish_failed, stats.pending_publishes) == (0, 0, 0)
    assert broker.topic_statistics(name)["stored"] == 0


async def roundtrip(config: teb.BackendConfig, name: str) -> teb.Message:
    got: list[teb.Message] = []
    done = trio.Event()

    async def handler(message: teb.Message) -> None:
        got.append(message)
        done.set()

    async with teb.open_bus(config, options=teb.BusOptions(service="hd")) as bus:
        await bus.subscribe(name, handler)
        await bus.publish(name, b"body", key=EDGE_KEY, message_id=EDGE_ID, headers=EDGE_HEADERS, confirm=True)
        await done.wait()
    assert len(got) == 1
    return got[0]


def assert_unchanged(message: teb.Message) -> None:
    assert dict(message.headers) == EDGE_HEADERS
    assert (message.data, message.key, message.message_id) == (b"body", EDGE_KEY, EDGE_ID)


async def test_edge_headers_arrive_unchanged_on_memory() -> None:
    assert_unchanged(await roundtrip(teb.MemoryConfig(), topic("mem")))


@pytest.mark.nats
async def test_edge_headers_arrive_unchanged_on_nats(nats_url: str) -> None:
    with trio.fail_after(30):
        assert_unchanged(await roundtrip(teb.NatsConfig(servers=nats_url), topic("nats")))


@pytest.mark.kafka
async def test_edge_headers_arrive_unchanged_on_kafka(kafka_bootstrap: str) -> None:
    config = teb.KafkaConfig(bootstrap_servers=kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500)
    with trio.fail_after(60):
        assert_unchanged(await roundtrip(config, topic("kafka")))


# -- key and message id in each backend's own fields -------------------------------------------------------------


def test_nats_writes_key_and_id_to_its_own_headers_whatever_the_envelope_headers_say() -> None:
    from trio_eventbus.backends.nats import wire

    env = teb.Envelope(aggregate_id="agg-1", event_type="T", event_version=1, payload=b"{}")
    body, headers = teb.encode_envelope(env)
    _, out = wire.wire_message("t", body, headers, env.aggregate_id, env.event_id, None)
    assert (out["X-Message-Key"], out["Nats-Msg-Id"]) == ("agg-1", env.event_id)
    _, out = wire.wire_message("t", b"x", {"X-Aggregate-ID": "other"}, "mine", None, None)
    assert out["X-Message-Key"] == "mine"  # the argument decides, not a header that looks like a key
    delivery = wire.to_delivery("t", body, out, 1, None)
    assert (delivery.key, delivery.message_id) == ("mine", None)
    assert "X-Message-Key" not in delivery.headers


def test_nats_decoding_falls_back_to_the_aggregate_id_of_foreign_envelopes() -> None:
    """A producer that does not write X-Message-Key (the Go services) keeps its per-aggregate order."""
    from trio_eventbus.backends.nats import wire

    env = teb.Envelope(aggregate_id="agg-2", event_type="T", event_version=1, payload=b"{}")
    body, headers = teb.encode_envelope(env)
    delivery = wire.to_delivery("t", body, {**headers, "Nats-Msg-Id": env.event_id}, 1, None)
    assert (delivery.key, delivery.message_id) == ("agg-2", env.event_id)
    assert delivery.headers == headers


async def envelope_roundtrip(config: teb.BackendConfig, name: str) -> tuple[teb.Envelope, teb.Message]:
    got: list[teb.Message] = []
    done = trio.Event()

    async def handler(message: teb.Message) -> None:
        got.append(message)
        done.set()

    env = teb.Envelope(aggregate_id="order-9", event_type="Created", event_version=1, payload=b'{"n":1}')
    async with teb.open_bus(config, options=teb.BusOptions(service="hd")) as bus:
        await bus.subscribe(name, handler)
        await bus.publish_envelope(name, env, confirm=True)
        await done.wait()
    return env, got[0]


def assert_envelope_fields(env: teb.Envelope, message: teb.Message) -> None:
    assert (message.key, message.message_id) == (env.aggregate_id, env.event_id)
    assert dict(message.headers) == teb.encode_envelope(env)[1]  # the bus's own fields are not shown as headers


async def test_envelope_key_and_id_on_memory() -> None:
    assert_envelope_fields(*await envelope_roundtrip(teb.MemoryConfig(), topic("env-mem")))


@pytest.mark.nats
async def test_envelope_key_and_id_on_nats(nats_url: str) -> None:
    with trio.fail_after(30):
        assert_envelope_fields(*await envelope_roundtrip(teb.NatsConfig(servers=nats_url), topic("env-nats")))


@pytest.mark.kafka
async def test_envelope_key_and_id_on_kafka(kafka_bootstrap: str) -> None:
    config = teb.KafkaConfig(bootstrap_servers=kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500)
    with trio.fail_after(60):
        assert_envelope_fields(*await envelope_roundtrip(config, topic("env-kafka")))


def test_the_memo_of_checked_keys_is_bounded() -> None:
    from trio_eventbus import _envelope

    for n in range(_envelope._CHECKED_KEYS_LIMIT + 10):
        check_key_and_id(f"key-{n}", None)
        assert len(_envelope._checked_keys) <= _envelope._CHECKED_KEYS_LIMIT
    check_key_and_id("key-1", None)  # known: fine
    with pytest.raises(teb.InvalidHeaderError, match="key"):
        check_key_and_id(["key-1"], None)  # unhashable: refused, not a TypeError
    with pytest.raises(teb.InvalidHeaderError, match="key"):
        check_key_and_id("key-1 ", None)
