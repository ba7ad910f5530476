"""Helpers shared by the Kafka test modules (not tests)."""

from __future__ import annotations

import itertools
import os
from typing import Any

from trio_eventbus.backends.kafka.config import KafkaConfig

_ids = itertools.count()


def unique(stem: str) -> str:
    return f"teb-kafka-{stem}-{os.getpid()}-{next(_ids)}"


def config(bootstrap: str, **kw: Any) -> KafkaConfig:
    """A config with quick group membership (the broker's minimum session timeout is 6 s)."""
    base: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}
    return KafkaConfig(bootstrap_servers=bootstrap, **(base | kw))
