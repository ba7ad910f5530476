"""The application helpers: Subscribers (decorator registration) and config_from_url / config_from_env."""

from __future__ import annotations

import pytest
import trio

import trio_eventbus as teb

# -- Subscribers -------------------------------------------------------------------------------------------------


async def test_decorated_handlers_are_subscribed_and_stay_plain_functions() -> None:
    subscribers = teb.Subscribers()
    orders: list[str] = []
    audit: list[bytes] = []

    @subscribers.subscriber("shop.orders", envelope=True)  # group: the bus's service
    async def on_order(event: teb.Envelope) -> None:
        orders.append(event.aggregate_id)

    @subscribers.subscriber("shop.audit", group="auditors")
    async def on_audit(message: teb.Message) -> None:
        audit.append(message.data)

    assert on_order.__name__ == "on_order"  # returned unchanged: callable in unit tests
    assert len(subscribers) == 2
    assert repr(subscribers) == "<Subscribers [shop.orders/<service>, shop.audit/auditors]>"
    async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="shop")) as bus:
        await subscribers.subscribe_all(bus)
        await bus.publish_envelope(
            "shop.orders", teb.Envelope(aggregate_id="o-1", event_type="T", event_version=1, payload=b"{}")
        )
        await bus.publish("shop.audit", b"a")
        with trio.fail_after(5):
            await bus.wait_idle()
        assert bus.statistics().subscriptions == 2
    assert orders == ["o-1"]
    assert audit == [b"a"]


def test_declaration_errors_are_raised_at_the_decorator() -> None:
    subscribers = teb.Subscribers()
    with pytest.raises(teb.InvalidTopicError):
        subscribers.subscriber("bad topic!")
    with pytest.raises(teb.InvalidOptionError):
        subscribers.subscriber("t", group="")

    def not_async(message: teb.Message) -> None:
        pass

    with pytest.raises(teb.InvalidHandlerError):
        subscribers.subscriber("t", group="g")(not_async)  # type: ignore[type-var]

    async def handler(message: teb.Message) -> None:
        pass

    subscribers.subscriber("t", group="g")(handler)
    with pytest.raises(teb.AlreadySubscribedError):
        subscribers.subscriber("t", group="g")(handler)
    subscribers.subscriber("t", group="other")(handler)  # another group of the same topic is fine
    assert len(subscribers) == 2


async def test_a_subscription_without_group_needs_a_service() -> None:
    subscribers = teb.Subscribers()

    @subscribers.subscriber("t")
    async def handler(message: teb.Message) -> None:
        pass

    async with teb.open_bus(teb.MemoryConfig()) as bus:
        with pytest.raises(teb.InvalidOptionError, match="needs a consumer group"):
            await subscribers.subscribe_all(bus)


# -- config_from_url / config_from_env -----------------------------------------------------------------------------


def test_config_from_url_names_each_backend() -> None:
    assert isinstance(teb.config_from_url("memory://"), teb.MemoryConfig)
    assert teb.config_from_url("memory://", fetch_batch=8) == teb.MemoryConfig(fetch_batch=8)
    nats = teb.config_from_url("nats://user:pw@10.0.0.1:4222,10.0.0.2:4222", stream_storage="memory")
    assert isinstance(nats, teb.NatsConfig)
    assert nats.servers == ("nats://user:pw@10.0.0.1:4222", "nats://10.0.0.2:4222")
    assert nats.stream_storage == "memory"
    assert teb.config_from_url("tls://h:4443").servers == ("tls://h:4443",)  # type: ignore[attr-defined]
    kafka = teb.config_from_url("kafka://k1:9092,kafka://k2:9092/")
    assert isinstance(kafka, teb.KafkaConfig)
    assert kafka.bootstrap_servers == ("k1:9092", "k2:9092")


@pytest.mark.parametrize(
    "url", ["127.0.0.1:4222", "redis://h:6379", "nats://", "kafka://", "kafka://nohost", "memory://host"]
)
def test_config_from_url_refuses_bad_urls(url: str) -> None:
    with pytest.raises(teb.InvalidOptionError):
        teb.config_from_url(url)


def test_config_from_url_passes_bad_settings_to_the_config_validation() -> None:
    with pytest.raises(teb.InvalidOptionError, match="fetch_batch"):
        teb.config_from_url("memory://", fetch_batch=0)


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEB_URL", raising=False)
    assert isinstance(teb.config_from_env(), teb.MemoryConfig)
    monkeypatch.setenv("TEB_URL", "kafka://k:9092")
    assert isinstance(teb.config_from_env(), teb.KafkaConfig)
    monkeypatch.setenv("ORDERS_BROKER", "nats://n:4222")
    assert teb.config_from_env("ORDERS_BROKER").servers == ("nats://n:4222",)  # type: ignore[attr-defined]
    monkeypatch.setenv("TEB_URL", "")
    assert isinstance(teb.config_from_env(default="memory://"), teb.MemoryConfig)
