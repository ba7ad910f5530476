"""The decode step: a delivery becomes the value its handler takes, or is dead-lettered at once.

A raw subscription (``subscribe``) gets a :class:`~trio_eventbus.Message` built from the delivery's fields
(:func:`message_of`; it cannot fail). An envelope subscription (``subscribe_envelope``) gets the
:class:`~trio_eventbus.Envelope` the in-process backend handed through (``Delivery.envelope``), else the
decoded body (:func:`envelope_of`). A body that does not decode is not retried (it will never decode): the
:class:`Undecodable` step counts it (``undecodable``) and hands it to the dead-letter step at once, with
reason ``undecodable`` and the delivery's attempt count. The handler and the middleware never see it.

A keyless delivery of an envelope subscription was decoded by the router already (:func:`key_from_body`), so
:func:`envelope_of` finds it on ``Delivery.envelope`` and does not decode it again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._abc import Delivery
from .._codec import decode_envelope
from .._envelope import Envelope, Message
from .._exceptions import InvalidEnvelopeError
from .dead_letter import DeadLetter
from .settle import Counters

__all__ = ["Decode", "Undecodable", "Value", "decoder", "envelope_of", "key_from_body", "message_of"]

#: What a handler takes.
Value = Message | Envelope
#: ``decode(delivery)``: the handler's value; raises ``InvalidEnvelopeError`` when the body does not decode.
Decode = Callable[[Delivery], Value]


def _message_of_builder() -> Callable[[Delivery], Message]:
    # One call per message: set the slots of a new Message directly (what ``_envelope.new_message`` does for
    # positional arguments), reading the fields from the delivery. Same value as ``Message(...)``: Message has
    # no validators or converters; the field names are checked here and in the tests.
    names = ("topic", "data", "key", "headers", "message_id", "delivery_attempt")
    assert tuple(f.name for f in attrs.fields(Message)) == names
    new = object.__new__
    slots: Mapping[str, Any] = vars(Message)
    s_topic, s_data, s_key, s_headers, s_id, s_attempt = (slots[n].__set__ for n in names)

    def message_of(delivery: Delivery) -> Message:
        """The :class:`Message` of ``delivery`` (the decode of a raw subscription)."""
        message: Message = new(Message)
        s_topic(message, delivery.topic)
        s_data(message, delivery.body)
        s_key(message, delivery.key)
        s_headers(message, delivery.headers)
        s_id(message, delivery.message_id)
        s_attempt(message, delivery.attempt)
        return message

    return message_of


message_of = _message_of_builder()


def envelope_of(delivery: Delivery) -> Envelope:
    """The :class:`Envelope` of ``delivery``; raises :class:`~trio_eventbus.InvalidEnvelopeError`."""
    return delivery.envelope or decode_envelope(delivery.body, delivery.headers)


def key_from_body(delivery: Delivery) -> str | None:
    """The key of a keyless envelope delivery: its body's ``aggregate_id``, or None when it does not decode.

    Decodes once and keeps the envelope on ``delivery.envelope`` (what :func:`envelope_of` returns); sets
    ``delivery.key`` to the aggregate id, so that parking, dead letters and the handler context see the key as
    for an envelope that came with its headers.
    """
    envelope = delivery.envelope
    if envelope is None:
        try:
            envelope = delivery.envelope = decode_envelope(delivery.body, delivery.headers)
        except InvalidEnvelopeError:
            return None  # stays keyless: the decode step dead-letters it
    key = delivery.key = envelope.aggregate_id
    return key


def decoder(envelopes: bool) -> Decode:
    """The decode function of a subscription: :func:`envelope_of` or :func:`message_of`."""
    return envelope_of if envelopes else message_of


class Undecodable:
    """What happens to a delivery that does not decode: counted, then dead-lettered at once."""

    __slots__ = ("_counters", "_dead_letter")

    def __init__(self, dead_letter: DeadLetter, counters: Counters) -> None:
        self._dead_letter = dead_letter
        self._counters = counters

    async def __call__(self, delivery: Delivery, error: Exception) -> None:
        """Count ``delivery`` as undecodable and dead-letter it (reason ``undecodable``)."""
        self._counters.undecodable += 1
        await self._dead_letter(delivery, error, delivery.attempt, "undecodable")
