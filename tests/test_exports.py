"""The public face: the exported names, where they say they live, and the one way to get a bus."""

from __future__ import annotations

import inspect
import pickle

import pytest

import trio_eventbus as teb
import trio_eventbus.testing

EXPECTED = {
    "AlreadySubscribedError",
    "Backend",
    "BackendConfig",
    "BackendFeatures",
    "BackendStatistics",
    "BackendUnavailable",
    "BusClosedError",
    "BusOptions",
    "CallNext",
    "Delivery",
    "DeliverySink",
    "Disposition",
    "Envelope",
    "EventBus",
    "EventBusError",
    "HandlerContext",
    "HandlerError",
    "InvalidEnvelopeError",
    "InvalidHandlerError",
    "InvalidHeaderError",
    "InvalidOptionError",
    "InvalidTopicError",
    "KafkaConfig",
    "KafkaGroupStatistics",
    "KafkaStatistics",
    "MemoryBroker",
    "MemoryConfig",
    "MemoryStatistics",
    "Message",
    "MessageTooLargeError",
    "Middleware",
    "NatsConfig",
    "NatsStatistics",
    "NatsSubscriptionStatistics",
    "Outcome",
    "OutgoingMessage",
    "PublishError",
    "PublishResult",
    "RetryPolicy",
    "Statistics",
    "TopicOptions",
    "decode_envelope",
    "encode_envelope",
    "new_event_id",
    "open_bus",
    "validate_topic",
}


def test_public_exports() -> None:
    assert set(teb.__all__) == EXPECTED
    for name in teb.__all__:
        assert getattr(teb, name) is not None
    assert issubclass(teb.InvalidEnvelopeError, ValueError)
    assert issubclass(teb.InvalidHeaderError, teb.InvalidEnvelopeError)
    assert issubclass(teb.InvalidOptionError, ValueError)
    for exc in (teb.BusClosedError, teb.PublishError, teb.BackendUnavailable, teb.AlreadySubscribedError):
        assert issubclass(exc, teb.EventBusError)


@pytest.mark.parametrize(
    ("module", "name"),
    [(teb, n) for n in teb.__all__] + [(trio_eventbus.testing, n) for n in trio_eventbus.testing.__all__],
)
def test_every_exported_name_reports_its_public_module(module: object, name: str) -> None:
    obj = getattr(module, name)
    public = module.__name__  # type: ignore[attr-defined]
    assert obj.__module__ == public, f"{name} says it lives in {obj.__module__}"
    assert obj.__name__ == name
    assert obj.__qualname__ == name
    assert getattr(__import__(public, fromlist=["_"]), obj.__qualname__) is obj
    if inspect.isclass(obj):  # methods too: tracebacks and docs show the public path
        for attr, value in vars(obj).items():
            if inspect.isfunction(value) and value.__module__.startswith("trio_eventbus"):
                assert value.__module__ == public, f"{name}.{attr}"


def test_values_pickle_under_their_public_names() -> None:
    envelope = teb.Envelope(aggregate_id="a-1", event_type="Created", event_version=1, payload=b"{}")
    data = pickle.dumps(envelope)
    assert b"trio_eventbus._envelope" not in data
    assert pickle.loads(data) == envelope
    assert pickle.loads(pickle.dumps(teb.BusOptions(lanes=3))) == teb.BusOptions(lanes=3)


def test_event_bus_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match=r"open_bus"):
        teb.EventBus()
    backend = teb.MemoryConfig().create_backend()
    with pytest.raises(TypeError, match=r"no public constructor: use trio_eventbus\.open_bus"):
        teb.EventBus(backend, teb.BusOptions())  # type: ignore[call-arg]


async def test_open_bus_still_builds_one() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        assert type(bus) is teb.EventBus
        assert isinstance(bus.statistics().backend, teb.MemoryStatistics)
