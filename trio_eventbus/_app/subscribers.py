"""Subscribers: subscriptions declared with decorators next to their handlers, registered on a bus in one call.

The shape users of FastStream's ``@broker.subscriber`` know, without a broker object at import time::

    subscribers = teb.Subscribers()

    @subscribers.subscriber("shop.orders", envelope=True)         # group: BusOptions.service
    async def on_order(event: teb.Envelope) -> None: ...

    @subscribers.subscriber("shop.orders.dlq", group="alerts")
    async def on_dead_letter(message: teb.Message) -> None: ...

    teb.run(teb.config_from_env(), subscribers=subscribers, options=teb.BusOptions(service="shipping"))
    # or, with a bus of your own:  await subscribers.subscribe_all(bus)

The decorator checks what it can at once (topic and group names, an async handler, the same (topic, group)
declared twice) and returns the handler unchanged, so it stays an ordinary function for unit tests.
Further keyword arguments are passed to ``bus.subscribe`` / ``bus.subscribe_envelope`` as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import trio

from .._bus import EventBus
from .._dispatch.middleware import check_async
from .._exceptions import AlreadySubscribedError
from .._options import validate_group, validate_topic

__all__ = ["Subscribers"]

H = TypeVar("H", bound=Callable[..., Awaitable[object]])


def _frozen(options: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(options))


@attrs.frozen(slots=True)
class _Declared:
    """One declared subscription of a :class:`Subscribers`."""

    #: The topic consumed.
    topic: str
    #: The consumer group (``None``: the bus's ``BusOptions.service``).
    group: str | None
    #: ``True``: the handler gets decoded :class:`~trio_eventbus.Envelope` values (``subscribe_envelope``);
    #: ``False``: :class:`~trio_eventbus.Message` values (``subscribe``).
    envelope: bool
    #: The handler, an ``async def`` function.
    handler: Callable[..., Awaitable[object]]
    #: Further keyword arguments of ``subscribe`` / ``subscribe_envelope``.
    options: Mapping[str, Any] = attrs.field(converter=_frozen)


class Subscribers:
    """A list of subscriptions declared with :meth:`subscriber` (see the module docstring)."""

    def __init__(self) -> None:
        self._subscriptions: list[_Declared] = []

    def subscriber(
        self, topic: str, *, group: str | None = None, envelope: bool = False, **options: Any
    ) -> Callable[[H], H]:
        """Declare that ``topic`` is handled (in ``group``, default ``BusOptions.service``) by the decorated
        ``async def`` function: with :class:`~trio_eventbus.Envelope` values when ``envelope=True``, else with
        :class:`~trio_eventbus.Message` values. Returns the function unchanged.

        Raises :class:`~trio_eventbus.InvalidTopicError` / :class:`~trio_eventbus.InvalidOptionError` for a bad
        name (at the call), :class:`~trio_eventbus.InvalidHandlerError` for a function that is not async and
        :class:`~trio_eventbus.AlreadySubscribedError` when ``(topic, group)`` is declared twice (at decoration).
        """
        validate_topic(topic)
        if group is not None:
            validate_group(group)

        def register(handler: H) -> H:
            check_async(handler)
            if any(s.topic == topic and s.group == group for s in self._subscriptions):
                where = "the bus's service group" if group is None else f"group {group!r}"
                raise AlreadySubscribedError(f"{topic!r} is already declared in {where}")
            self._subscriptions.append(_Declared(topic, group, envelope, handler, options))
            return handler

        return register

    async def subscribe_all(self, bus: EventBus) -> None:
        """Subscribe ``bus`` to every declared subscription, in declaration order.

        Errors are those of ``bus.subscribe`` (:class:`~trio_eventbus.InvalidOptionError` for a subscription
        without a group on a bus without ``BusOptions.service``, ...), raised at the first failing one; the
        ones before it stay subscribed. Always a checkpoint; cancelled, the subscriptions made so far stay.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        for sub in self._subscriptions:
            if sub.envelope:
                await bus.subscribe_envelope(sub.topic, sub.handler, group=sub.group, **sub.options)
            else:
                await bus.subscribe(sub.topic, sub.handler, group=sub.group, **sub.options)
        if not self._subscriptions:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def __len__(self) -> int:
        return len(self._subscriptions)

    def __repr__(self) -> str:
        names = ", ".join(f"{s.topic}/{s.group or '<service>'}" for s in self._subscriptions)
        return f"<Subscribers [{names}]>"
