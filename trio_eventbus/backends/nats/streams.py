"""Streams of the NATS backend: a topic's stream config from its ``TopicOptions``, created or updated.

Names and the mapping from ``TopicOptions`` are described in :mod:`trio_eventbus.backends.nats.backend`; a
partitioned topic's stream captures its base subject and one subject per partition (:mod:`.partitions`).
Everything here runs on the asyncio loop (``ensure_stream``) or is pure (``stream_config``).

Changing ``TopicOptions.partitions`` of an existing topic updates the stream's subjects (a WARNING says so):
keys then move to other partitions, and per-key order holds again only once the messages published before the
change are consumed (as when partitions are added to a Kafka topic).
"""

from __future__ import annotations

import logging
from typing import Any

from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ..._exceptions import InvalidOptionError, InvalidTopicError
from ..._options import TopicOptions
from .config import NatsConfig
from .partitions import stream_subjects
from .wire import api_error_code

__all__ = ["ensure_stream", "stream_config"]

logger = logging.getLogger("trio_eventbus.nats")

_ERR_OVERLAP = 10065  # subjects overlap with an existing stream
_ERR_NAME_IN_USE = 10058  # stream name already in use with a different configuration
_ERR_REPLICAS = 10074  # replicas > 1 not supported in non-clustered mode


def stream_config(cfg: NatsConfig, topic: str, name: str, o: TopicOptions) -> api.StreamConfig:
    """The stream of ``topic``: its ``TopicOptions``, unset limits from ``NatsConfig.stream_max_*``."""
    max_age = o.max_age if o.max_age is not None else cfg.stream_max_age
    window = cfg.duplicate_window if cfg.duplicate_window is not None else o.duplicate_window
    window = max(window, 0.001)
    if max_age is not None:
        window = min(window, max_age)
    max_messages = o.max_messages if o.max_messages is not None else cfg.stream_max_messages
    max_bytes = o.max_bytes if o.max_bytes is not None else cfg.stream_max_bytes
    return api.StreamConfig(
        name=name,
        subjects=stream_subjects(topic, o.partitions),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE if cfg.stream_storage == "file" else api.StorageType.MEMORY,
        discard=api.DiscardPolicy.OLD,
        max_msgs=-1 if max_messages is None else max_messages,
        max_bytes=-1 if max_bytes is None else max_bytes,
        max_age=0 if max_age is None else max_age,
        num_replicas=o.replicas,
        duplicate_window=window,
    )


async def ensure_stream(js: Any, config: api.StreamConfig) -> None:
    """Create the stream, or update its limits when they differ (loop thread); refuse a name clash."""
    topic = (config.subjects or [""])[0]
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except APIError as exc:
            code = api_error_code(exc)
            if code == _ERR_OVERLAP:
                raise InvalidTopicError(
                    f"topic {topic!r}: another stream already captures one of its subjects {config.subjects} "
                    f"({exc.description}; a partitioned topic also captures '<partition>.{topic}')"
                ) from exc
            if code == _ERR_REPLICAS:
                raise InvalidOptionError(f"topic {topic!r}: {exc.description}") from exc
            if code != _ERR_NAME_IN_USE:
                raise
            info = await js.stream_info(config.name)  # created concurrently by another bus
    existing = info.config
    have = list(existing.subjects or ())
    if not have or have[0] != topic or have[1:] != stream_subjects(topic, len(have) - 1)[1:]:
        raise InvalidTopicError(
            f"topic {topic!r} maps to stream {config.name!r}, which already exists for subjects "
            f"{existing.subjects} (topics differing only by '.' and '_' share a stream name)"
        )
    resubject = have != list(config.subjects or ())
    if resubject:
        logger.warning(
            "topic %r: its stream %r has %d partition subjects, the topic's options ask for %d: updating it; keys "
            "move to other partitions, so per-key order holds again once the older messages are consumed",
            topic,
            config.name,
            max(0, len(have) - 1),
            max(0, len(config.subjects or ()) - 1),
        )
    if resubject or _differs(existing, config):
        update = api.StreamConfig.from_response(existing.as_dict())
        for field in ("subjects", "max_msgs", "max_bytes", "max_age", "num_replicas", "duplicate_window"):
            setattr(update, field, getattr(config, field))
        try:
            await js.update_stream(update)
        except APIError as exc:
            raise InvalidOptionError(f"cannot update stream {config.name!r}: {exc.description}") from exc


def _differs(existing: api.StreamConfig, wanted: api.StreamConfig) -> bool:
    def num(value: float | None, unset: float) -> float:
        return unset if value is None else float(value)

    pairs = (
        (num(existing.max_msgs, -1), num(wanted.max_msgs, -1)),
        (num(existing.max_bytes, -1), num(wanted.max_bytes, -1)),
        (num(existing.max_age, 0), num(wanted.max_age, 0)),
        (num(existing.num_replicas, 1), num(wanted.num_replicas, 1)),
        (num(existing.duplicate_window, 0), num(wanted.duplicate_window, 0)),
    )
    return any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in pairs)
