"""Start and stop real local brokers (NATS JetStream, single-node KRaft Kafka) for tests, demo, benchmarks.

Synchronous, stdlib-only process managers, meant for pytest session fixtures and scripts — not for use inside
a running Trio task (their ``start()``/``stop()`` block for seconds; from Trio, call them through
``trio.to_thread.run_sync``). They are not thread-safe: one owner per instance.

* :class:`NatsServer` runs ``nats-server -a 127.0.0.1 -p <port> -m <monitor port> -js -sd <tmp>``, using the pinned
  release (:data:`NATS_SERVER_VERSION`) that ``tools/provision.py`` builds (see :func:`locate_nats_server`).
* :class:`KafkaServer` runs Kafka from the jars that ``tools/provision.py`` caches.

Lifecycle of both: ``start()`` spawns the broker and returns when it serves requests (or raises
:class:`BrokerStartError` with the tail of its log); ``stop()`` terminates it (SIGTERM, then SIGKILL after a
grace period) and keeps its ports and data directory, so a later ``start()``/``restart()`` brings back the
same broker with its streams/topics; ``close()`` (or leaving the ``with`` block) stops it and deletes the
data directory. Ports are chosen from free loopback ports at construction, so ``url``/``bootstrap`` are known
before ``start()``.

No process is left behind: every live broker is also killed by an ``atexit`` hook and, on Linux when started
from the main thread, by the kernel when the starting process dies (``PR_SET_PDEATHSIG``).

Import everything from here: the Kafka manager lives in the private module ``_kafka_server`` and the
process plumbing both managers share in ``_process``; this module re-exports their public names.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from ._kafka_server import KAFKA_VERSION, KafkaServer, locate_java, locate_kafka_libs
from ._kafka_server import kafka_home as kafka_home
from ._kafka_server import kafka_metadata_brokers as kafka_metadata_brokers
from ._process import _HOST, BrokerStartError, _ManagedServer, _tcp_accepts, free_port

__all__ = [
    "KAFKA_VERSION",
    "NATS_SERVER_VERSION",
    "BrokerStartError",
    "KafkaServer",
    "NatsServer",
    "free_port",
    "locate_java",
    "locate_kafka_libs",
    "locate_nats_server",
    "nats_home",
]

#: nats-server release built by tools/provision.py (keep in sync with NATS_SERVER_VERSION there).
NATS_SERVER_VERSION = "2.15.2"
_MARKER_NAME = ".provisioned"


# ------------------------------------------------------------------------------------------ locating


def nats_home() -> Path:
    """nats-server cache: ``$TEB_NATS_HOME`` or ``~/.cache/trio_eventbus/nats-server-<version>`` (binary in bin/)."""
    env = os.environ.get("TEB_NATS_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trio_eventbus" / f"nats-server-{NATS_SERVER_VERSION}"


def locate_nats_server() -> str:
    """Path of the ``nats-server`` binary, or :class:`BrokerStartError` naming the provisioning step.

    ``$TEB_NATS_SERVER`` when set (a binary of your own; the bus needs 2.11 or newer), else the pinned release
    that ``tools/provision.py`` built into :func:`nats_home` (only a completed build counts: its marker file
    is written last). A ``nats-server`` on PATH is never used: distributions ship releases too old for the bus.
    """
    env = os.environ.get("TEB_NATS_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise BrokerStartError(f"TEB_NATS_SERVER={env!r} is not an executable file")
        return env
    home = nats_home()
    binary = home / "bin" / "nats-server"
    try:
        ready = (home / _MARKER_NAME).read_text().strip() == NATS_SERVER_VERSION and os.access(binary, os.X_OK)
    except OSError:
        ready = False
    if not ready:
        raise BrokerStartError(
            f"nats-server {NATS_SERVER_VERSION} not found in {binary.parent}: run `python tools/provision.py` "
            "(builds it with Go >= 1.26 in about a minute), or set TEB_NATS_SERVER to a nats-server >= 2.11 "
            "binary, or TEB_NATS_URL to a running server"
        )
    return str(binary)


# ---------------------------------------------------------------------------------------------- NATS


class NatsServer(_ManagedServer):
    """A ``nats-server`` with JetStream on 127.0.0.1, its store in a private temp directory.

    ``user``/``password`` or ``token`` turn on client authentication. Ready means: the client port accepts
    TCP, the log of this run says "Server is ready", and ``/healthz?js-enabled-only=true`` on the monitoring
    port answers 200 (when JetStream is on). ``restart()`` keeps the port and the store, so streams survive.
    """

    _KIND: ClassVar[str] = "NatsServer"
    _DIR_PREFIX: ClassVar[str] = "teb-nats-"
    _PROC_NAME: ClassVar[str] = "nats-server"
    _LOG_NAME: ClassVar[str] = "nats-server.log"
    _STOP_GRACE: ClassVar[float] = 10.0  # JetStream flushes its store on SIGTERM

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        jetstream: bool = True,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 20.0,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if token is not None and user is not None:
            raise ValueError("use either user/password or token, not both")
        super().__init__(ready_timeout=ready_timeout)
        self._auto_ports = port is None
        self.port = port if port is not None else free_port()
        self.monitor_port = free_port()
        self.user, self.password, self.token = user, password, token
        self.jetstream = jetstream
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (no credentials; see :attr:`auth_url`)."""
        return f"nats://{_HOST}:{self.port}"

    @property
    def auth_url(self) -> str:
        """The URL with the configured credentials embedded (``nats://user:pass@…`` or ``nats://token@…``)."""
        if self.user is not None and self.password is not None:
            return f"nats://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{_HOST}:{self.port}"
        if self.token is not None:
            return f"nats://{quote(self.token, safe='')}@{_HOST}:{self.port}"
        return self.url

    @property
    def monitor_url(self) -> str:
        return f"http://{_HOST}:{self.monitor_port}"

    @property
    def store_dir(self) -> Path | None:
        """The JetStream store directory (exists after the first ``start()`` until ``close()``)."""
        return self._dir.path / "jetstream" if self._dir is not None else None

    def _argv(self, exe: str) -> list[str]:
        assert self.store_dir is not None
        argv = [exe, "-a", _HOST, "-p", str(self.port), "-m", str(self.monitor_port)]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.store_dir)]
        if self.user is not None and self.password is not None:
            argv += ["--user", self.user, "--pass", self.password]
        if self.token is not None:
            argv += ["--auth", self.token]
        return argv + list(self.extra_args)

    def _ready(self) -> bool:
        assert self._proc is not None
        if "Server is ready" not in self._proc.current_log() or not _tcp_accepts(self.port):
            return False
        if not self.jetstream:
            return True
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        """Spawn the server and block until it is ready (no-op when running)."""
        if not self._should_start():
            return
        exe = locate_nats_server()
        self._ensure_workdir()
        self._spawn_until_ready(
            lambda: self._argv(exe),
            self._ready,
            lambda: f"client port {self.port}",
            self._new_ports if self._auto_ports else None,
        )

    def _new_ports(self) -> None:
        self.port, self.monitor_port = free_port(), free_port()

    def __repr__(self) -> str:
        state = self._state()
        return f"<NatsServer {self.url} {state} store={self.store_dir}>"
