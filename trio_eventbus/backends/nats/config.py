"""NatsConfig: how a bus connects to NATS JetStream (importable without nats-py installed).

``create_backend()`` imports :mod:`trio_eventbus.backends.nats` (and so nats-py) only when a bus opens, so
``import trio_eventbus`` works without the ``nats`` extra. Every value is validated at construction and a bad
one raises :class:`~trio_eventbus.InvalidOptionError`. Secrets (password, token, credentials embedded in
server URLs, ``client_options`` values) never appear in ``repr``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import attrs

from ... import _validate as v
from ..._exceptions import InvalidOptionError

if TYPE_CHECKING:
    from .backend import NatsBackend

__all__ = ["NatsConfig"]

_PREFIX = r"[A-Za-z0-9_\-]{0,32}"
#: client_options keys the backend owns (callbacks, and the settings it manages during the first connect).
_RESERVED_CLIENT_OPTIONS = frozenset(
    {
        "servers",
        "error_cb",
        "disconnected_cb",
        "reconnected_cb",
        "closed_cb",
        "allow_reconnect",
        "max_reconnect_attempts",
        "user",
        "password",
        "token",
        "user_credentials",
        "tls",
    }
)


def _servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple) or not value:
        raise InvalidOptionError("servers must be a URL or a non-empty sequence of URLs", field="servers")
    out = []
    for url in value:
        if not isinstance(url, str) or not url.strip():
            raise InvalidOptionError(f"servers: URL {url!r} must be a non-empty str", field="servers")
        scheme = urlsplit(url if "://" in url else f"nats://{url}").scheme
        if scheme not in ("nats", "tls", "ws", "wss"):
            raise InvalidOptionError(
                f"servers: URL scheme {scheme!r} is not one of nats, tls, ws, wss", field="servers"
            )
        out.append(url.strip())
    return tuple(out)


def _mask_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://***@{host}{port}"


def _repr_servers(servers: tuple[str, ...]) -> str:
    return repr(tuple(_mask_url(u) for u in servers))


def _repr_secret(value: object) -> str:
    return "None" if value is None else "'***'"


def _repr_client_options(value: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k!r}: ..." for k in value) + "}"


def _client_options(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidOptionError(
            "client_options must be a mapping of nats-py connect() keyword arguments", field="client_options"
        )
    bad = sorted(k for k in value if not isinstance(k, str) or k in _RESERVED_CLIENT_OPTIONS)
    if bad:
        raise InvalidOptionError(
            f"client_options may not set {bad}: use the NatsConfig fields (the backend owns the callbacks)",
            field="client_options",
        )
    return MappingProxyType(dict(value))


_positive_number = v.positive_float
_optional_positive_number = v.optional(v.positive_float)
_positive_int = v.positive_int
_optional_positive_int = v.optional(v.positive_int)
_optional_str = v.optional(v.non_empty_str)


@attrs.frozen(slots=True, kw_only=True)
class NatsConfig:
    """Configuration of the NATS JetStream backend (one connection per bus).

    Connection
        ``servers`` (URL or URLs), ``name`` (shown in server monitoring); credentials ``user``/``password``,
        ``token`` or ``creds_file`` (a ``.creds`` JWT file; needs the ``nkeys`` package); TLS ``tls_ca_file``,
        ``tls_cert_file``/``tls_key_file`` (client certificate), ``tls_hostname``. ``connect_timeout``
        bounds each connection attempt. The first connect of a bus tries each server twice and raises
        :class:`~trio_eventbus.BackendUnavailable` from ``open_bus`` when none accepts it (or the
        credentials are refused). After that the client reconnects by itself: ``max_reconnect_attempts``
        per server (``-1`` = forever), ``reconnect_time_wait`` seconds apart; ``reconnect_buffer_bytes`` of
        publishes are buffered while reconnecting.
    Publishing
        ``max_pending_publishes``: most JetStream publishes awaiting their PubAck; when that many are, the
        backend waits for answers before writing more (backpressure, as nats-py's
        ``publish_async_max_pending``).
        ``publish_timeout``: a publish without a PubAck after this many seconds is reported as failed
        (the server may still have stored it; the ``Nats-Msg-Id`` makes a retry safe).
        ``compression="lz4"`` (needs the ``lz4`` extra) compresses bodies of at least
        ``compression_min_bytes`` bytes when that makes them smaller.
    Consuming
        ``fetch_batch``: most messages requested by one pull request, and the unit of delivery to the bus;
        ``fetch_max_wait``: seconds one pull request waits on the server for messages; ``fetch_max_bytes``:
        most bytes one pull request may bring (default 8 MiB; raised to the server's ``max_payload`` plus 4 KiB
        when that is larger, so one message always fits): a few requests are outstanding at a time, so this
        keeps what the server has in flight to the client far below its 64 MiB slow-consumer limit even for
        large messages. ``ack_wait``: seconds JetStream waits for an ack before redelivering; deliveries held
        by the bus (waiting in a lane or running in a handler) get a progress ack (``+WPI``) every
        ``ack_wait / 3`` s, so only a connection lost (or a loop blocked) for longer than ``ack_wait`` lets
        JetStream redeliver a held message: this instance then drops the duplicate and logs a warning.
        ``max_ack_pending``: unacknowledged messages per consumer; ``max_deliver``: deliveries per message
        (``None`` = unlimited; the bus dead-letters after ``RetryPolicy.max_attempts`` anyway).
    Groups (see :mod:`trio_eventbus.backends.nats.groups`)
        Every consumer pins one member of its group at a time (JetStream priority groups, ``pinned_client``).
        ``pinned_ttl`` (default 5 s): the server unpins a member that sent no pull request for this long, so a
        dead member's partitions move on after it; a live member renews its pin at least every
        ``pinned_ttl / 3`` s even while it pulls nothing (backpressure). Partitioned topics
        (``TopicOptions.partitions > 1``) share their partitions among the group's live members: each member
        announces itself every ``group_heartbeat`` s (default 1 s) and counts as gone after
        ``group_session_timeout`` s (default 5 s) without one. A dead member's partitions are handled again
        after at most ``max(group_session_timeout, pinned_ttl)`` plus a pull request's ``fetch_max_wait``.
    Streams
        ``streams`` says where a topic's messages are stored (:mod:`trio_eventbus.backends.nats.streams`):

        - ``"per_topic"`` (default): the bus owns one stream per topic, named ``stream_prefix`` + the topic with
          ``.`` → ``_``, capturing exactly the topic's subjects; it creates it, and updates its limits from the
          topic's :class:`~trio_eventbus.TopicOptions`. A stream the bus did not make that captures the
          topic's subject is refused (:class:`~trio_eventbus.InvalidTopicError`: JetStream forbids overlaps).
        - ``"existing"``: the bus never creates, updates or deletes a stream; each topic uses whichever
          stream captures its subject (JetStream's ``STREAM.NAMES`` with a subject filter), such as a Go
          service's ``orders.>`` stream. No such stream: :class:`~trio_eventbus.InvalidTopicError` from the
          first publish, ``configure_topic`` or ``subscribe`` of the topic.
        - ``"existing_or_per_topic"``: the stream that captures the topic's subject if there is one (used as
          it is), else the bus's per-topic stream (created as in ``"per_topic"``).

        In the two ``existing`` modes a stream the bus did not create keeps its own settings: the topic's
        retention options and the ``stream_*`` limits below are not applied to it (one WARNING names the
        differences); a partitioned topic needs a stream that also captures ``<p>.<topic>`` for each partition
        (else :class:`~trio_eventbus.InvalidOptionError`). Durable consumers in a stream that is not the topic's
        own are named ``<group>~<topic with . → _>`` (one stream holds many topics).

        ``stream_prefix`` starts every stream name the bus makes (``"ORDERS_"`` gives the Go services'
        per-topic layout ``<stream>_<topic>``); ``stream_storage`` is ``"file"`` or ``"memory"``;
        ``stream_max_bytes``/``stream_max_messages``/``stream_max_age`` apply where the topic's
        :class:`~trio_eventbus.TopicOptions` leave the limit unset; ``duplicate_window``, when set, replaces
        ``TopicOptions.duplicate_window`` for every stream. ``request_timeout`` bounds JetStream API calls.
    Bridge
        ``bridge``: ``"auto"`` (a running ``trio_asyncio`` loop if there is one, else ``"thread"``),
        ``"thread"`` (an asyncio loop in a thread owned by the bus, uvloop when installed unless
        ``use_uvloop=False``) or ``"trio-asyncio"``.

    ``client_options`` are passed to nats-py's ``Client.connect`` as they are (not the callbacks, servers
    or credentials, which the backend owns).
    """

    servers: tuple[str, ...] = attrs.field(default=("nats://127.0.0.1:4222",), converter=_servers, repr=_repr_servers)
    name: str | None = attrs.field(default="trio-eventbus", validator=_optional_str)
    user: str | None = attrs.field(default=None, validator=_optional_str)
    password: str | None = attrs.field(default=None, validator=_optional_str, repr=_repr_secret)
    token: str | None = attrs.field(default=None, validator=_optional_str, repr=_repr_secret)
    creds_file: str | None = attrs.field(default=None, validator=_optional_str)
    tls_ca_file: str | None = attrs.field(default=None, validator=_optional_str)
    tls_cert_file: str | None = attrs.field(default=None, validator=_optional_str)
    tls_key_file: str | None = attrs.field(default=None, validator=_optional_str)
    tls_hostname: str | None = attrs.field(default=None, validator=_optional_str)
    connect_timeout: float = attrs.field(default=5.0, validator=_positive_number)
    reconnect_time_wait: float = attrs.field(default=1.0, validator=_positive_number)
    max_reconnect_attempts: int = attrs.field(default=-1, validator=v.positive_int_or(-1, "forever"))
    reconnect_buffer_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive_int)
    ping_interval: float = attrs.field(default=20.0, validator=_positive_number)
    request_timeout: float = attrs.field(default=5.0, validator=_positive_number)
    max_pending_publishes: int = attrs.field(default=10_000, validator=_positive_int)
    publish_timeout: float = attrs.field(default=10.0, validator=_positive_number)
    fetch_batch: int = attrs.field(default=500, validator=_positive_int)
    fetch_max_wait: float = attrs.field(default=0.1, validator=_positive_number)
    fetch_max_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive_int)
    ack_wait: float = attrs.field(default=30.0, validator=_positive_number)
    max_ack_pending: int = attrs.field(default=10_000, validator=_positive_int)
    max_deliver: int | None = attrs.field(default=None, validator=_optional_positive_int)
    pinned_ttl: float = attrs.field(default=5.0, validator=_positive_number)
    group_heartbeat: float = attrs.field(default=1.0, validator=_positive_number)
    group_session_timeout: float = attrs.field(default=5.0, validator=_positive_number)
    streams: Literal["per_topic", "existing", "existing_or_per_topic"] = attrs.field(
        default="per_topic", validator=v.one_of("per_topic", "existing", "existing_or_per_topic")
    )
    stream_prefix: str = attrs.field(default="TEB_", validator=v.matches(_PREFIX, "0-32 characters of A-Z a-z 0-9 _ -"))
    stream_storage: Literal["file", "memory"] = attrs.field(default="file", validator=v.one_of("file", "memory"))
    stream_max_bytes: int | None = attrs.field(default=None, validator=_optional_positive_int)
    stream_max_messages: int | None = attrs.field(default=None, validator=_optional_positive_int)
    stream_max_age: float | None = attrs.field(default=None, validator=_optional_positive_number)
    duplicate_window: float | None = attrs.field(default=None, validator=_optional_positive_number)
    bridge: Literal["auto", "thread", "trio-asyncio"] = attrs.field(
        default="auto", validator=v.one_of("auto", "thread", "trio-asyncio")
    )
    use_uvloop: bool | None = attrs.field(default=None, validator=v.one_of(None, True, False))
    compression: Literal["none", "lz4"] = attrs.field(default="none", validator=v.one_of("none", "lz4"))
    compression_min_bytes: int = attrs.field(default=128, validator=_positive_int)
    client_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_client_options, repr=_repr_client_options)

    def __attrs_post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise InvalidOptionError("user and password go together")
        if sum(x is not None for x in (self.user, self.token, self.creds_file)) > 1:
            raise InvalidOptionError("use one of user/password, token or creds_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise InvalidOptionError("tls_cert_file and tls_key_file go together")
        if self.group_session_timeout <= 2 * self.group_heartbeat:
            raise InvalidOptionError(
                "group_session_timeout must be more than twice group_heartbeat (a lost heartbeat must not end a "
                "member)",
                field="group_session_timeout",
            )
        if self.pinned_ttl <= self.fetch_max_wait:
            raise InvalidOptionError(
                "pinned_ttl must be longer than fetch_max_wait (a pinned member renews its pin with each pull request)",
                field="pinned_ttl",
            )
        if self.compression == "lz4" and importlib.util.find_spec("lz4") is None:
            raise InvalidOptionError(
                "compression='lz4' needs the lz4 package: pip install 'trio_eventbus[lz4]'", field="compression"
            )

    def create_backend(self) -> NatsBackend:
        """A new, unstarted backend for one bus (imports nats-py now)."""
        try:
            from .backend import NatsBackend
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the NATS backend needs nats-py: pip install 'trio_eventbus[nats]'") from exc
        return NatsBackend(self)
