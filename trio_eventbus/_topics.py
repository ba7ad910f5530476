"""TopicRegistry: per-topic options and single-flight provisioning.

The first publish or subscribe to a topic provisions it on the broker (stream, topic, log) exactly once, even
when many tasks reach a new topic at the same moment: one task calls ``Backend.ensure_topic`` and the others
wait for its verdict (success, or the same error). Later calls find the topic ready without awaiting
anything, so the publish hot path pays one set lookup.
"""

from __future__ import annotations

import attrs
import trio

from ._abc import Backend
from ._options import TopicOptions, validate_topic

__all__ = ["TopicRegistry"]


@attrs.define(slots=True, eq=False)
class _Attempt:
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


class TopicRegistry:
    """Options per topic and the set of topics already provisioned (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._options: dict[str, TopicOptions] = {}
        self._default = TopicOptions()
        self.ready: set[str] = set()
        self._attempts: dict[str, _Attempt] = {}

    def options(self, topic: str) -> TopicOptions:
        """The options configured for ``topic``, or the defaults."""
        return self._options.get(topic, self._default)

    async def configure(self, topic: str, options: TopicOptions) -> None:
        """Store ``options`` for ``topic`` and apply them on the broker now (creating or updating it)."""
        validate_topic(topic)
        if not isinstance(options, TopicOptions):
            raise TypeError(f"options must be a TopicOptions, not {type(options).__name__}")
        while (attempt := self._attempts.get(topic)) is not None:
            await attempt.done.wait()
        self._options[topic] = options
        self.ready.discard(topic)
        await self.ensure(topic)

    async def ensure(self, topic: str) -> None:
        """Provision ``topic`` once (single flight); raises the provisioning error to every waiter.

        If the task provisioning a topic is cancelled, one of the waiters takes over. An invalid name raises
        :class:`InvalidTopicError` before anything is awaited; a ready topic costs one set lookup.
        """
        if topic not in self.ready:
            validate_topic(topic)
        while topic not in self.ready:
            attempt = self._attempts.get(topic)
            if attempt is not None:
                await attempt.done.wait()
                if attempt.error is not None and not isinstance(attempt.error, trio.Cancelled):
                    raise attempt.error
                continue
            attempt = self._attempts[topic] = _Attempt()
            try:
                await self._backend.ensure_topic(topic, self.options(topic))
            except BaseException as exc:
                attempt.error = exc
                raise
            else:
                self.ready.add(topic)
            finally:
                del self._attempts[topic]
                attempt.done.set()
