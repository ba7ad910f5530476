"""Streams of the NATS backend: which stream holds a topic, and a topic's own stream created or updated.

``NatsConfig.streams`` chooses (:func:`use_stream`, loop thread):

``"per_topic"`` (default)
    The topic's own stream, named ``NatsConfig.stream_prefix`` + the topic with ``.`` → ``_``, capturing exactly
    the topic's subjects (a partitioned topic also ``<p>.<topic>``, :mod:`.partitions`), made from its
    ``TopicOptions`` (:func:`stream_config`), created or updated by :func:`ensure_stream`. A stream the bus did
    not make that captures one of these subjects is refused with :class:`InvalidTopicError` (JetStream
    forbids two streams capturing one subject).
``"existing"``
    The stream that captures the topic's subject, whatever its name and subjects (``orders.>`` of a Go
    service, say), found with JetStream's ``STREAM.NAMES`` request filtered by the topic's subject. The bus
    never creates, updates or deletes it: no stream capturing the subject is :class:`InvalidTopicError` at the
    first ``ensure_topic`` (publish, ``configure_topic``) or subscribe of the topic, naming the subject and
    how to fix it. A partitioned topic needs that stream to capture ``<p>.<topic>`` for every partition as well
    (checked against its subjects); else :class:`InvalidOptionError`.
``"existing_or_per_topic"``
    The capturing stream when there is one (as ``"existing"``), else the topic's own stream (as
    ``"per_topic"``). If another service creates an overlapping stream between the look-up and the creation,
    JetStream refuses the creation and the look-up runs once more.

Streams the bus creates carry the metadata ``trio_eventbus: per_topic`` (:data:`OWNER`); a found stream with
that mark and the topic's own name is managed as under ``"per_topic"`` (updated from the options) in every
mode. A stream of the same name without the mark (a Go service's per-topic stream, or one made by an older
version of this bus) counts as not the bus's.

A stream the bus did not create keeps its own settings: the retention limits, replicas and duplicate window
the topic's ``TopicOptions`` (and ``NatsConfig.stream_*``) ask for are not applied to it; when they differ,
:class:`StreamUse` lists the differences and the backend logs one WARNING per topic. A found stream is never
re-created by the bus if it disappears (its consumers' recovery then fails, logged, until it is back).

Changing ``TopicOptions.partitions`` of an existing per-topic stream updates its subjects (a WARNING says so):
keys then move to other partitions, and per-key order holds again only once the messages published before the
change are consumed (as when partitions are added to a Kafka topic).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import attrs
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ..._exceptions import InvalidOptionError, InvalidTopicError
from ..._options import TopicOptions
from .config import NatsConfig
from .partitions import stream_subjects
from .wire import api_error_code

__all__ = ["OWNER", "StreamUse", "captures", "ensure_stream", "find_stream", "stream_config", "use_stream"]

logger = logging.getLogger("trio_eventbus.nats")

_ERR_OVERLAP = 10065  # subjects overlap with an existing stream
_ERR_NAME_IN_USE = 10058  # stream name already in use with a different configuration
_ERR_REPLICAS = 10074  # replicas > 1 not supported in non-clustered mode
#: Stream metadata marking a per-topic stream the bus created (the existing modes still manage those).
OWNER = ("trio_eventbus", "per_topic")


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
        metadata=dict([OWNER]),
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
        update.metadata = {**(existing.metadata or {}), **(config.metadata or {})}
        try:
            await js.update_stream(update)
        except APIError as exc:
            raise InvalidOptionError(f"cannot update stream {config.name!r}: {exc.description}") from exc


_LIMITS = (("max_msgs", -1), ("max_bytes", -1), ("max_age", 0), ("num_replicas", 1), ("duplicate_window", 0))


def _differences(existing: api.StreamConfig, wanted: api.StreamConfig) -> list[str]:
    """``field: have → wanted`` for each limit of ``wanted`` that ``existing`` does not have."""

    def num(value: float | None, unset: float) -> float:
        return unset if value is None else float(value)

    out = []
    for field, unset in _LIMITS:
        a, b = num(getattr(existing, field), unset), num(getattr(wanted, field), unset)
        if abs(a - b) > 1e-6 * max(1.0, abs(b)):
            out.append(f"{field}: {a:g} (options: {b:g})")
    return out


def _differs(existing: api.StreamConfig, wanted: api.StreamConfig) -> bool:
    return bool(_differences(existing, wanted))


@attrs.frozen(slots=True)
class StreamUse:
    """The stream a topic's messages go to (:func:`use_stream`).

    ``config``: the config the bus created it with (it may re-create it if it vanishes), ``None`` for a stream
    the bus does not own. ``own``: it is the topic's per-topic stream (its consumers are named after the group
    alone). ``ignored``: the limits the topic's options ask for that a stream not owned by the bus does not
    have (not applied).
    """

    name: str
    config: api.StreamConfig | None
    own: bool
    ignored: tuple[str, ...] = ()


def captures(pattern: str, subject: str) -> bool:
    """Whether the stream subject ``pattern`` (``*`` one token, ``>`` one or more at the end) captures the
    literal ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


async def find_stream(js: Any, subject: str) -> str | None:
    """The name of the stream capturing the literal ``subject`` (``STREAM.NAMES`` filtered by subject), or
    ``None``. JetStream forbids overlapping streams, so there is at most one."""
    try:
        return str(await js.find_stream_name_by_subject(subject))
    except NotFoundError:
        return None


async def use_stream(
    js: Any, mode: Literal["per_topic", "existing", "existing_or_per_topic"], wanted: api.StreamConfig
) -> StreamUse:
    """The stream of the topic whose own stream would be ``wanted``, under ``NatsConfig.streams = mode``
    (see the module docstring; loop thread)."""
    subjects, name = list(wanted.subjects or ()), wanted.name
    topic = subjects[0]
    assert name is not None
    if mode == "per_topic":
        await ensure_stream(js, wanted)
        return StreamUse(name, wanted, True)
    found = await find_stream(js, topic)
    if found is None and mode == "existing_or_per_topic":
        try:
            await ensure_stream(js, wanted)
            return StreamUse(name, wanted, True)
        except InvalidTopicError:  # an overlapping stream appeared meanwhile: use it if it captures the topic
            found = await find_stream(js, topic)
            if found is None:
                raise
    if found is None:
        example = f"'{topic.split('.')[0]}.>'" if "." in topic else repr(topic)
        raise InvalidTopicError(
            f"topic {topic!r}: no JetStream stream captures the subject {topic!r}, and NatsConfig.streams="
            f"{mode!r} never creates one: create a stream capturing it (subjects [{example}], say) or use "
            "streams='existing_or_per_topic'"
        )
    info = await js.stream_info(found)
    if found == name and (info.config.metadata or {}).get(OWNER[0]) == OWNER[1]:
        await ensure_stream(js, wanted)  # the topic's own stream, created by a bus: managed as in "per_topic"
        return StreamUse(name, wanted, True)
    have = list(info.config.subjects or ())
    missing = [s for s in subjects[1:] if not any(captures(p, s) for p in have)]
    if missing:
        raise InvalidOptionError(
            f"topic {topic!r} has {len(subjects) - 1} partitions, but the stream {found!r} that captures it "
            f"(subjects {have}) does not capture {missing[:3]}{' ...' if len(missing) > 3 else ''}: a stream the "
            f"bus does not create must also capture '<partition>.{topic}' for each partition ('0.{topic}', "
            f"'1.{topic}', ...), or use TopicOptions(partitions=1)"
        )
    return StreamUse(found, None, found == name, tuple(_differences(info.config, wanted)))
