"""Parked keys: the keys of one subscription whose later messages go to the dead-letter topic unhandled.

With ``DeadLetterPolicy(after="park")`` a subscription has a :class:`Park`. When one of its messages with key
``K`` is dead-lettered (its attempts exhausted, non-retryable, or undecodable), the dead-letter step parks
``K`` (:meth:`Park.park`) before it publishes the dead letter. From then on the pipeline
(:mod:`.pipeline`) checks each delivery's key before decoding it: a message of a parked key is not handled
(no decode, no handler, no middleware, no retry) but dead-lettered in its turn with ``X-DLQ-Reason: parked``
and settled (``TERM``) once the broker has the dead letter. So parked messages reach the dead-letter topic in
the key's order, and the lane moves on at once: a parked key never blocks its lane or other keys.
:meth:`Park.release` (the operator's ``EventBus.release_key``) un-parks a key: its messages delivered after
that are handled again.

The key is parked when the failing message is about to be dead-lettered, before its dead letter is
published: if that publish fails, the message is nak'ed, comes back, and is then dead-lettered as ``parked``
(its error is in the ERROR log of the first try).

Bounds: at most ``DeadLetterPolicy.max_parked_keys`` keys per subscription; past it a key is not parked (its
later messages flow, as with ``after="continue"``) and that is logged at ERROR: the set never grows without
bound. ``Statistics.parked_keys`` is the number of parked keys right now, ``Statistics.parked`` the messages
dead-lettered because their key was parked.

Weakness (documented to users): the set lives in this bus instance. A restart forgets it, and another
instance of the same group does not know it (a rebalance can move the key there): later messages of the key
are handled again there. The parked messages themselves are safe in the dead-letter topic.

Logging (``trio_eventbus.dispatch``): parking at WARNING, release at INFO, each with topic, group and key.
"""

from __future__ import annotations

import logging

from .settle import Counters

__all__ = ["Park"]

logger = logging.getLogger("trio_eventbus.dispatch")


class Park:
    """The parked keys of the subscription ``(topic, group)`` (see the module docstring). ``keys`` is read by
    the pipeline on every delivery (a ``set``: one lookup)."""

    __slots__ = ("_counters", "_limit", "group", "keys", "topic")

    def __init__(self, topic: str, group: str, limit: int, counters: Counters) -> None:
        self.topic = topic
        self.group = group
        self.keys: set[str] = set()
        self._limit = limit
        self._counters = counters

    def park(self, key: str) -> bool:
        """Park ``key``; ``False`` (logged at ERROR) when the set is full and the key stays unparked."""
        keys = self.keys
        if key in keys:
            return True
        if len(keys) >= self._limit:
            logger.error(
                "cannot park key %r of topic %r, group %r: %d keys are parked already (the limit, "
                "DeadLetterPolicy.max_parked_keys); its later messages will be handled",
                key,
                self.topic,
                self.group,
                len(keys),
                extra={"topic": self.topic, "group": self.group, "key": key},
            )
            return False
        keys.add(key)
        self._counters.parked_keys += 1
        logger.warning(
            "parked key %r of topic %r, group %r: its later messages go to the dead-letter topic unhandled "
            "until EventBus.release_key(%r, %r, group=%r)",
            key,
            self.topic,
            self.group,
            self.topic,
            key,
            self.group,
            extra={"topic": self.topic, "group": self.group, "key": key},
        )
        return True

    def release(self, key: str) -> bool:
        """Un-park ``key``; ``False`` if it was not parked."""
        try:
            self.keys.remove(key)
        except KeyError:
            return False
        self._counters.parked_keys -= 1
        logger.info(
            "released key %r of topic %r, group %r: its messages are handled again",
            key,
            self.topic,
            self.group,
            extra={"topic": self.topic, "group": self.group, "key": key},
        )
        return True

    def snapshot(self) -> frozenset[str]:
        """The parked keys right now."""
        return frozenset(self.keys)
