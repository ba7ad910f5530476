"""One validator family for every option and config class: same error type, same field naming, same checks."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

import trio_eventbus as teb
from trio_eventbus import _validate

CLASSES: list[tuple[type[Any], dict[str, Any]]] = [
    (teb.BusOptions, {}),
    (teb.RetryPolicy, {}),
    (teb.DeadLetterPolicy, {}),
    (teb.TopicOptions, {}),
    (teb.MemoryConfig, {}),
    (teb.NatsConfig, {}),
    (teb.KafkaConfig, {"bootstrap_servers": "127.0.0.1:9092"}),
]


@pytest.mark.parametrize(("cls", "required"), CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_every_field_validator_comes_from_the_one_family(cls: type[Any], required: dict[str, Any]) -> None:
    validated = 0
    for field in attrs.fields(cls):
        if field.validator is not None:
            assert field.validator.__module__ == _validate.__name__, f"{cls.__name__}.{field.name}"
            validated += 1
    assert validated >= 1
    cls(**required)  # the defaults are valid


BAD: list[tuple[type[Any], str, object]] = [
    (teb.BusOptions, "lanes", 0),
    (teb.BusOptions, "lanes", True),
    (teb.BusOptions, "lanes", 2.0),
    (teb.BusOptions, "worker_buffer", -1),
    (teb.BusOptions, "close_timeout", -0.5),
    (teb.BusOptions, "close_timeout", math.nan),
    (teb.BusOptions, "max_pending_publishes", "10"),
    (teb.DeadLetterPolicy, "suffix", ""),
    (teb.DeadLetterPolicy, "suffix", ".dl q"),
    (teb.DeadLetterPolicy, "after", "stop"),
    (teb.DeadLetterPolicy, "max_parked_keys", 0),
    (teb.BusOptions, "dead_letter", ".dlq"),
    (teb.BusOptions, "retry", None),
    (teb.BusOptions, "service", "a.b"),
    (teb.BusOptions, "service", ""),
    (teb.RetryPolicy, "max_attempts", 0),
    (teb.RetryPolicy, "initial_backoff", math.inf),
    (teb.RetryPolicy, "multiplier", 0),
    (teb.RetryPolicy, "strategy", "later"),
    (teb.RetryPolicy, "non_retryable", ValueError),
    (teb.RetryPolicy, "non_retryable", (ValueError, "TypeError")),
    (teb.RetryPolicy, "non_retryable", (KeyboardInterrupt,)),
    (teb.TopicOptions, "max_age", 0),
    (teb.TopicOptions, "max_bytes", -5),
    (teb.TopicOptions, "partitions", False),
    (teb.TopicOptions, "duplicate_window", -1),
    (teb.MemoryConfig, "fetch_batch", 0),
    (teb.NatsConfig, "connect_timeout", 0),
    (teb.NatsConfig, "fetch_batch", 1.5),
    (teb.NatsConfig, "max_deliver", 0),
    (teb.NatsConfig, "max_reconnect_attempts", 0),
    (teb.NatsConfig, "max_reconnect_attempts", -2),
    (teb.NatsConfig, "stream_prefix", "a.b"),
    (teb.NatsConfig, "stream_storage", "disk"),
    (teb.NatsConfig, "use_uvloop", 1),
    (teb.NatsConfig, "name", ""),
    (teb.NatsConfig, "servers", "http://x"),
    (teb.NatsConfig, "client_options", {"servers": ["x"]}),
    (teb.KafkaConfig, "linger_ms", -1),
    (teb.KafkaConfig, "acks", True),  # True == 1, but it is not the int 1
    (teb.KafkaConfig, "commit_interval", 0),
    (teb.KafkaConfig, "pause_threshold", 0),
    (teb.KafkaConfig, "create_topics", "yes"),
    (teb.KafkaConfig, "bootstrap_servers", "localhost"),
]


@pytest.mark.parametrize(("cls", "field", "value"), BAD, ids=lambda x: repr(x)[:30])
def test_bad_values_raise_invalid_option_error_naming_the_field(cls: type[Any], field: str, value: object) -> None:
    required = dict(CLASSES)[cls]
    with pytest.raises(teb.InvalidOptionError) as info:
        cls(**(required | {field: value}))
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert field in str(info.value)


def test_valid_values_are_kept_as_given() -> None:
    options = teb.BusOptions(lanes=3, close_timeout=0, dead_letter=teb.DeadLetterPolicy(suffix=None), service="g-1")
    assert (options.lanes, options.close_timeout, options.dead_letter.suffix, options.service) == (3, 0, None, "g-1")
    assert teb.RetryPolicy(non_retryable=(ValueError, KeyError)).non_retryable == (ValueError, KeyError)
    assert teb.RetryPolicy(initial_backoff=0, multiplier=1.5, strategy="redeliver").backoff(3) == 0.0
    assert teb.TopicOptions(max_age=0.5, duplicate_window=0).max_age == 0.5
    assert teb.NatsConfig(max_reconnect_attempts=-1, max_deliver=None, stream_prefix="").stream_prefix == ""
    assert teb.KafkaConfig(bootstrap_servers="h:1", acks=1, enable_idempotence=False).acks == 1


def test_plain_constructor_arguments_use_the_family_too() -> None:
    with pytest.raises(teb.InvalidOptionError, match="topic_capacity must be a positive int") as info:
        teb.MemoryBroker(topic_capacity=0)
    assert info.value.field == "topic_capacity"


def test_cross_field_rules_still_hold() -> None:
    with pytest.raises(teb.InvalidOptionError, match="user and password"):
        teb.NatsConfig(user="u")
    with pytest.raises(teb.InvalidOptionError, match="heartbeat"):
        teb.KafkaConfig(bootstrap_servers="h:1", session_timeout_ms=1000, heartbeat_interval_ms=3000)


def test_names_of_topics_and_groups() -> None:
    assert teb.validate_topic("orders.eu-1_x") == "orders.eu-1_x"
    for bad in ("", "a..b", "a.*", "a b", "x" * 250, 3):
        with pytest.raises(teb.InvalidTopicError):
            teb.validate_topic(bad)
    with pytest.raises(teb.InvalidOptionError) as info:
        _validate.validate_group("a/b")
    assert info.value.field == "group"
