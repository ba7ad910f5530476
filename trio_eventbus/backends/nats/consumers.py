"""The durable consumers of a (topic, group) and the source that pulls them (asyncio side).

Each slot of the group (:mod:`.partitions`) has a durable ``pinned_client`` consumer (:mod:`.pinned`):
explicit acks, ``ack_wait``, ``max_ack_pending``, ``max_deliver``, ``priority_timeout = pinned_ttl``, filtering
its slot's subject. Consumers are created (or updated) through the raw JetStream API: nats-py's
``ConsumerConfig`` has no priority fields. An existing consumer whose config cannot be updated is used as it
is, with a WARNING (one created by an older bus has no pinned client: its group's instances then share it as
before, without the per-key promise across instances).

In a stream the bus found capturing the topic (``NatsConfig.streams``), which may hold other topics, the
consumers are named ``<group>~<topic with . → _>`` (:func:`~.wire.durable_name`) and filter the topic's
subject; an existing consumer of that name filtering another subject is refused (:class:`InvalidTopicError`)
rather than updated. Such a stream is never re-created when it vanishes (its recovery fails, logged, until
it is back). A work-queue stream whose subject another consumer already takes is refused with
:class:`InvalidOptionError`.

The source of a subscription: one :class:`~.pinned.PinnedPuller` for a topic without partitions (every
instance pulls it; the server serves one), or a :class:`~.groups.PullerGroup` sharing the ``P + 1`` slots of
a partitioned topic among the group's live members. The pullers of a group share the subscription's window,
so each asks for its part of ``fetch_batch``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ..._exceptions import InvalidOptionError, InvalidTopicError
from .config import NatsConfig
from .consume import Source, Subscription, Window
from .groups import PullerGroup
from .partitions import BASE, PIN_GROUP, consumer_name, filter_subject, slots
from .pinned import PinnedPuller, create_consumer
from .streams import ensure_stream
from .wire import api_error_code

__all__ = ["check_filter", "consumer_config", "ensure_consumer", "pinned_source"]

logger = logging.getLogger("trio_eventbus.nats")

_ERR_WORKQUEUE = (10099, 10100)  # work-queue stream: multiple unfiltered consumers / filtered consumer not unique


def consumer_config(cfg: NatsConfig, topic: str, durable: str, slot: int) -> dict[str, Any]:
    """The durable ``pinned_client`` consumer of ``slot`` (raw JetStream config); ``durable`` is the base
    consumer's name (:func:`~.wire.durable_name`)."""
    name = consumer_name(durable, slot)
    return {
        "name": name,
        "durable_name": name,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": int(cfg.ack_wait * 1e9),
        "max_deliver": -1 if cfg.max_deliver is None else cfg.max_deliver,
        "max_ack_pending": cfg.max_ack_pending,
        "filter_subject": filter_subject(topic, slot),
        "priority_groups": [PIN_GROUP],
        "priority_policy": "pinned_client",
        "priority_timeout": int(cfg.pinned_ttl * 1e9),
    }


async def ensure_consumer(
    js: Any, stream: str, stream_config: api.StreamConfig | None, config: dict[str, Any], wait: float
) -> None:
    """Create or update the consumer; re-create a vanished stream first (only one the bus owns:
    ``stream_config`` not ``None``); keep an existing one that differs, unless it filters another subject."""
    try:
        await create_consumer(js, stream, config, wait)
    except NotFoundError:  # the stream is gone (memory storage after a restart, deleted by hand)
        if stream_config is None:
            raise
        await ensure_stream(js, stream_config)
        await create_consumer(js, stream, config, wait)
    except APIError as exc:
        if api_error_code(exc) in _ERR_WORKQUEUE:
            raise InvalidOptionError(
                f"stream {stream!r} is a work-queue stream and another consumer already takes "
                f"{config['filter_subject']!r} ({exc.description}): a work queue gives each message to one "
                "consumer only, so another group cannot read it; use a stream with limits or interest retention"
            ) from exc
        if not await check_filter(js, stream, config):
            raise exc from None
        logger.warning(
            "consumer %r of stream %r exists with another config (%s); using it as it is (without a pinned "
            "client, instances of its group may handle one key concurrently: delete it to let the bus re-create "
            "it)",
            config["durable_name"],
            stream,
            exc.description,
        )


async def check_filter(js: Any, stream: str, config: dict[str, Any]) -> bool:
    """Whether the consumer of ``config`` exists; :class:`InvalidTopicError` if it filters another subject
    (JetStream would update its filter: two topics' messages mixed)."""
    try:
        existing = await js.consumer_info(stream, config["durable_name"])
    except NotFoundError:
        return False
    have = existing.config.filter_subject
    if have != config["filter_subject"]:
        raise InvalidTopicError(
            f"consumer {config['durable_name']!r} of stream {stream!r} exists for the subject {have!r}, not "
            f"{config['filter_subject']!r}: topics differing only by '.' and '_' share consumer names in a "
            "stream holding both"
        )
    return True


async def pinned_source(
    cfg: NatsConfig,
    nc: Any,
    js: Any,
    sub: Subscription,
    stream: str,
    stream_config: api.StreamConfig | None,
    partitions: int,
    max_bytes: int,
    durable: str,
) -> Source:
    """Create the group's consumers and return the (unstarted) source of ``sub`` (loop thread).

    ``durable`` names the base consumer (:func:`~.wire.durable_name`) and the group's membership subject;
    ``stream_config`` is ``None`` for a stream the bus does not own (never re-created)."""
    slot_list = slots(partitions)
    configs = {slot: consumer_config(cfg, sub.topic, durable, slot) for slot in slot_list}
    for config in configs.values():
        if durable != sub.group:  # a stream holding other topics: names may clash (durable_name)
            await check_filter(js, stream, config)
        await ensure_consumer(js, stream, stream_config, config, cfg.request_timeout)
    batch = cfg.fetch_batch if len(slot_list) == 1 else max(16, -(-cfg.fetch_batch // len(slot_list)))

    def make(slot: int, window: Window | None) -> PinnedPuller:
        config = configs[slot]
        recover = functools.partial(ensure_consumer, js, stream, stream_config, config, cfg.request_timeout)
        return PinnedPuller(
            nc,
            sub,
            stream,
            config["durable_name"],
            batch,
            cfg.fetch_max_wait,
            recover,
            max_bytes=max_bytes,
            ack_wait=cfg.ack_wait,
            window=window,
            owns_pipe=window is None,
            js=js,
            pinned_ttl=cfg.pinned_ttl,
        )

    if len(slot_list) == 1:
        return make(BASE, None)
    return PullerGroup(
        nc,
        f"_TEB.pcg.{stream}.{durable}",
        slot_list,
        make,
        sub.pipe.close,
        heartbeat=cfg.group_heartbeat,
        timeout=cfg.group_session_timeout,
    )
