"""The public face: the exported names, where they say they live, and the one way to get a bus."""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest

import trio_eventbus as teb
import trio_eventbus.backends
import trio_eventbus.testing

ROOT = Path(__file__).resolve().parent.parent
BACKEND_AUTHOR_TYPES = {
    "Backend",
    "BackendFeatures",
    "Delivery",
    "DeliverySink",
    "Disposition",
    "Outcome",
    "OutgoingMessage",
}

EXPECTED = {
    "AlreadySubscribedError",
    "BackendConfig",
    "BackendStatistics",
    "BackendUnavailable",
    "BusClosedError",
    "BusOptions",
    "DeadLetterPolicy",
    "CallNext",
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
    "MemorySubscriptionStatistics",
    "Message",
    "MessageTooLargeError",
    "Middleware",
    "NatsConfig",
    "NonRetryableError",
    "NatsGroupStatistics",
    "NatsStatistics",
    "NatsSubscriptionStatistics",
    "PublishError",
    "PublishResult",
    "ResultChannel",
    "ResultsReaderError",
    "RetryPolicy",
    "Statistics",
    "Subscribers",
    "TopicOptions",
    "config_from_env",
    "config_from_url",
    "decode_envelope",
    "encode_envelope",
    "new_event_id",
    "open_bus",
    "run",
    "serve",
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
    [(teb, n) for n in teb.__all__]
    + [(trio_eventbus.backends, n) for n in trio_eventbus.backends.__all__]
    + [(trio_eventbus.testing, n) for n in trio_eventbus.testing.__all__],
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


def test_the_top_level_holds_the_application_api_and_backends_the_author_types() -> None:
    assert BACKEND_AUTHOR_TYPES.isdisjoint(teb.__all__)
    for name in BACKEND_AUTHOR_TYPES:
        assert not hasattr(teb, name), name
    assert set(trio_eventbus.backends.__all__) == BACKEND_AUTHOR_TYPES


async def test_publish_results_is_the_exported_result_channel() -> None:
    async with teb.open_bus(teb.MemoryConfig()) as bus:
        channel: teb.ResultChannel[teb.PublishResult] = bus.publish_results()
        assert type(channel) is teb.ResultChannel
        assert repr(type(channel)) == "<class 'trio_eventbus.ResultChannel'>"


def _private(module: str) -> bool:
    return any(part.startswith("_") or part == "cli" for part in module.split("."))


def _private_names(path: Path) -> list[str]:
    """Every import of a private module or name of the package in ``path``, and every ``teb._x`` attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trio_eventbus"):
            names = [alias.name for alias in node.names]
            found += [f"{node.module}.{n}" for n in names if n.startswith("_")]
            if _private(node.module or ""):
                found.append(node.module or "")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("trio_eventbus") and _private(a.name)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "teb":
            found += [f"teb.{node.attr}"] if node.attr.startswith("_") else []
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_use_only_the_public_api(path: Path) -> None:
    assert _private_names(path) == []


def test_the_private_import_check_finds_private_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import trio_eventbus as teb\n"
        "from trio_eventbus.cli.main import make_config\n"
        "from trio_eventbus._bus import open_bus\n"
        "from trio_eventbus import _codec\n"
        "import trio_eventbus._envelope\n"
        "x = teb._version\n"
    )
    assert _private_names(bad) == [
        "trio_eventbus.cli.main",
        "trio_eventbus._bus",
        "trio_eventbus._codec",
        "trio_eventbus._envelope",
        "teb._version",
    ]
