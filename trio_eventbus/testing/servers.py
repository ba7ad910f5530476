"""Start and stop real local brokers (NATS JetStream, single-node KRaft Kafka) for tests, demo, benchmarks.

Synchronous, stdlib-only process managers, meant for pytest session fixtures and scripts — not for use inside
a running Trio task (their ``start()``/``stop()`` block for seconds; from Trio, call them through
``trio.to_thread.run_sync``). They are not thread-safe: one owner per instance.

* :class:`NatsServer` runs ``nats-server -a 127.0.0.1 -p <port> -m <monitor port> -js -sd <tmp>``.
* :class:`KafkaServer` runs Kafka from the jars that ``tools/provision.py`` caches.

Lifecycle of both: ``start()`` spawns the broker and returns when it serves requests (or raises
:class:`BrokerStartError` with the tail of its log); ``stop()`` terminates it (SIGTERM, then SIGKILL after a
grace period) and keeps its ports and data directory, so a later ``start()``/``restart()`` brings back the
same broker with its streams/topics; ``close()`` (or leaving the ``with`` block) stops it and deletes the
data directory. Ports are chosen from free loopback ports at construction, so ``url``/``bootstrap`` are known
before ``start()``.

No process is left behind: every live broker is also killed by an ``atexit`` hook and, on Linux when started
from the main thread, by the kernel when the starting process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

__all__ = [
    "KAFKA_VERSION",
    "BrokerStartError",
    "KafkaServer",
    "NatsServer",
    "free_port",
    "locate_java",
    "locate_kafka_libs",
    "locate_nats_server",
]

#: Kafka release fetched by tools/provision.py (keep in sync with tools/kafka/pom.xml).
KAFKA_VERSION = "3.9.2"
_MARKER_NAME = ".provisioned"
_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 40
#: Debian installs nats-server in /usr/sbin, which is not on every user's PATH.
_NATS_FALLBACK_PATHS: tuple[str, ...] = ("/usr/sbin/nats-server",)


class BrokerStartError(RuntimeError):
    """A broker could not be found, exited during start-up, or was not ready in time.

    The message says what to install, or ends with the last lines of the broker's log.
    """


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS may hand it out again; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------ locating


def locate_nats_server() -> str:
    """Path of the ``nats-server`` binary (PATH, then Debian's /usr/sbin), or :class:`BrokerStartError`."""
    found = shutil.which("nats-server")
    for candidate in _NATS_FALLBACK_PATHS:
        if found is None and os.access(candidate, os.X_OK):
            found = candidate
    if found is None:
        raise BrokerStartError(
            "nats-server not found on PATH: install it with "
            "`sudo apt-get update && sudo apt-get install -y nats-server` "
            "(or run `python tools/provision.py` as root), or set TEB_NATS_URL to a running server"
        )
    return found


def locate_java() -> str:
    """Path of ``java`` ($JAVA_HOME/bin/java, then PATH), or :class:`BrokerStartError`."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
        return os.path.join(java_home, "bin", "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerStartError(
            "java not found: Kafka needs Java 17, e.g. `sudo apt-get install -y openjdk-17-jre-headless`"
        )
    return found


def kafka_home() -> Path:
    """Kafka jar cache: ``$TEB_KAFKA_HOME`` or ``~/.cache/trio_eventbus/kafka-<version>`` (jars in libs/)."""
    env = os.environ.get("TEB_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trio_eventbus" / f"kafka-{KAFKA_VERSION}"


def locate_kafka_libs() -> Path:
    """The directory of Kafka jars written by ``tools/provision.py``, or :class:`BrokerStartError`.

    Only a completed fetch counts (provision writes its marker file after the copy succeeded).
    """
    home = kafka_home()
    libs = home / "libs"
    if not (home / _MARKER_NAME).is_file() or not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        raise BrokerStartError(
            f"Kafka {KAFKA_VERSION} libraries not found in {libs}: "
            "run `python tools/provision.py` (needs java and mvn), "
            "or set TEB_KAFKA_BOOTSTRAP to a running broker"
        )
    return libs


# ------------------------------------------------------------------------- process bookkeeping


_live_lock = threading.Lock()
_live_procs: dict[int, subprocess.Popen[bytes]] = {}
_live_dirs: set[str] = set()


def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate ``proc`` and wait; SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    with _live_lock:
        _live_procs.pop(proc.pid, None)


@atexit.register
def _cleanup_at_exit() -> None:
    with _live_lock:
        procs = list(_live_procs.values())
        dirs = list(_live_dirs)
    for proc in procs:
        _reap(proc, grace=5.0)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the starting thread dies.

    The kernel ties the signal to the *thread* that forked, so it is used only from the main thread (a
    worker thread that exits would otherwise take the broker with it).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Process:
    """One broker process writing stdout+stderr to a log file; the only place that spawns and reaps."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where the current run's output starts in the (appended) log

    def spawn(self, argv: Sequence[str], cwd: Path) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # a terminal's Ctrl-C reaches pytest, which stops us in order
                preexec_fn=_parent_death_signal(),
            )
        with _live_lock:
            _live_procs[self.proc.pid] = self.proc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            _reap(self.proc, grace)
            self.proc = None

    def current_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(self.log_offset, f.seek(0, os.SEEK_END) - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it is true; raise BrokerStartError if the process exits or time runs out."""
        try:
            self._poll_ready(check, timeout, what)
        except BaseException:  # BrokerStartError, but also Ctrl-C while waiting: never leave it running
            self.stop(5.0)
            raise

    def _poll_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                raise BrokerStartError(f"{self.name} exited with status {code} during start-up:\n{tail}")
            if check():
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                raise BrokerStartError(f"{self.name} not ready after {timeout:.0f} s ({what}):\n{tail}")
            time.sleep(0.05)  # readiness polling of an external process, not test synchronisation


def _state(closed: bool, proc: _Process | None) -> str:
    if closed:
        return "closed"
    pid = proc.pid if proc is not None else None
    return f"running pid={pid}" if pid is not None else "stopped"


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _port_clash(exc: BrokerStartError) -> bool:
    return re.search(r"address already in use|BindException", str(exc), re.IGNORECASE) is not None


class _TempDir:
    """A temp directory registered for removal at exit, removed explicitly by ``close``."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        with _live_lock:
            _live_dirs.add(str(self.path))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with _live_lock:
            _live_dirs.discard(str(self.path))


# ---------------------------------------------------------------------------------------------- NATS


class NatsServer:
    """A ``nats-server`` with JetStream on 127.0.0.1, its store in a private temp directory.

    ``user``/``password`` or ``token`` turn on client authentication. Ready means: the client port accepts
    TCP, the log of this run says "Server is ready", and ``/healthz?js-enabled-only=true`` on the monitoring
    port answers 200 (when JetStream is on). ``restart()`` keeps the port and the store, so streams survive.
    """

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
        self._auto_ports = port is None
        self.port = port if port is not None else free_port()
        self.monitor_port = free_port()
        self.user, self.password, self.token = user, password, token
        self.jetstream = jetstream
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self._dir: _TempDir | None = None
        self._proc: _Process | None = None
        self._started_once = False
        self._closed = False

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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

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
        if self._closed:
            raise RuntimeError("NatsServer is closed")
        if self.running:
            return
        exe = locate_nats_server()
        if self._dir is None:
            self._dir = _TempDir("teb-nats-")
            self._proc = _Process("nats-server", self._dir.path / "nats-server.log")
        assert self._proc is not None
        attempts = 3 if self._auto_ports and not self._started_once else 1
        for attempt in range(attempts):
            self._proc.spawn(self._argv(exe), cwd=self._dir.path)
            try:
                self._proc.wait_ready(self._ready, self.ready_timeout, f"client port {self.port}")
            except BrokerStartError as exc:
                if attempt + 1 < attempts and _port_clash(exc):
                    self.port, self.monitor_port = free_port(), free_port()
                    continue
                raise
            break
        self._started_once = True

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server (JetStream flushes), SIGKILL after ``grace`` s; keeps port and store."""
        if self._proc is not None:
            self._proc.stop(grace)

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same port and store directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its store. Idempotent."""
        self.stop()
        if self._dir is not None:
            self._dir.remove()
            self._dir = None
        self._closed = True

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return self._proc.log_tail(lines) if self._proc is not None else "(not started)"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = _state(self._closed, self._proc)
        return f"<NatsServer {self.url} {state} store={self.store_dir}>"


# --------------------------------------------------------------------------------------------- Kafka


def _kafka_cluster_id() -> str:
    """A random Kafka cluster id (base64url of 16 bytes, no padding, not starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def _prop_escape(value: str) -> str:
    """Escape a value for a Java .properties file (read as ISO-8859-1 by Kafka)."""
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "".join(c if 0x20 <= ord(c) < 0x7F else f"\\u{ord(c):04x}" for c in out)


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SASL_USER = re.compile(r"^[A-Za-z0-9_.@-]+$")


def kafka_metadata_brokers(port: int, *, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Send a raw Kafka Metadata v1 request (no topics) to 127.0.0.1:``port``; return (node_id, host, port).

    Stdlib only; raises ``OSError``/``ValueError`` when the broker is not there or answers nonsense.
    """
    correlation_id = 0x7EB
    client_id = b"teb-readiness"
    # header v1: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body v1: topics = [] (none)
    payload = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 8 <= size <= 1 << 20:
            raise ValueError(f"implausible Metadata response size {size}")
        data = _recv_exact(sock, size)
    (got_id, n_brokers) = struct.unpack_from(">ii", data, 0)
    if got_id != correlation_id:
        raise ValueError("Metadata response with a foreign correlation id")
    brokers: list[tuple[int, str, int]] = []
    pos = 8
    for _ in range(n_brokers):
        node_id, host_len = struct.unpack_from(">ih", data, pos)
        pos += 6
        host = data[pos : pos + host_len].decode("utf-8")
        pos += host_len
        (bport, rack_len) = struct.unpack_from(">ih", data, pos)
        pos += 6 + max(rack_len, 0)
        brokers.append((node_id, host, bport))
    return brokers


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


class KafkaServer:
    """A single-node KRaft Kafka broker+controller on 127.0.0.1, data in a private temp directory.

    ``bootstrap`` is the client listener: PLAINTEXT, or SASL_PLAINTEXT with mechanism PLAIN when
    ``sasl_users`` ({username: password}) is given. In SASL mode the broker also has an unauthenticated
    PLAINTEXT listener (``internal_bootstrap``), used for inter-broker traffic and for the readiness check;
    the controller listener is always PLAINTEXT. Ready means a raw Metadata request (on the PLAINTEXT
    listener) lists at least one broker, and in SASL mode the SASL port also accepts TCP. The storage is
    formatted once, before the first start; ``restart()`` reuses ports and log dirs, so topics and records
    survive.
    """

    def __init__(
        self,
        *,
        sasl_users: Mapping[str, str] | None = None,
        heap_max: str = "768m",
        heap_min: str = "256m",
        jvm_args: Sequence[str] = ("-XX:+UseSerialGC",),
        extra_properties: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.sasl_users = dict(sasl_users or {})
        for name in self.sasl_users:
            if not _SASL_USER.match(name):
                raise ValueError(f"SASL user name {name!r} must match {_SASL_USER.pattern}")
        self.heap_max, self.heap_min = heap_max, heap_min
        self.jvm_args = tuple(jvm_args)
        self.extra_properties = dict(extra_properties or {})
        self.ready_timeout = ready_timeout
        self._new_ports()
        self.cluster_id = _kafka_cluster_id()
        self._dir: _TempDir | None = None
        self._proc: _Process | None = None
        self._formatted = False
        self._started_once = False
        self._closed = False

    def _new_ports(self) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.internal_port = free_port() if self.sasl_users else self.port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the client listener (SASL_PLAINTEXT when ``sasl_users`` is set)."""
        return f"{_HOST}:{self.port}"

    @property
    def internal_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of an unauthenticated PLAINTEXT listener (``bootstrap`` when not SASL)."""
        return f"{_HOST}:{self.internal_port}"

    @property
    def security_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"

    @property
    def data_dir(self) -> Path | None:
        return self._dir.path / "data" if self._dir is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def server_properties(self) -> str:
        """The server.properties text for the current ports and directory."""
        assert self.data_dir is not None
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{_HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if not self.sasl_users:
            props |= {
                "listeners": f"PLAINTEXT://{_HOST}:{self.port},CONTROLLER://{_HOST}:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{_HOST}:{self.port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            }
        else:
            first_user, first_password = next(iter(self.sasl_users.items()))
            jaas = " ".join(
                [
                    "org.apache.kafka.common.security.plain.PlainLoginModule required",
                    f"username={_jaas_quote(first_user)} password={_jaas_quote(first_password)}",
                    *(f"user_{u}={_jaas_quote(p)}" for u, p in self.sasl_users.items()),
                ]
            )
            props |= {
                "listeners": (
                    f"SASL_PLAINTEXT://{_HOST}:{self.port},INTERNAL://{_HOST}:{self.internal_port},"
                    f"CONTROLLER://{_HOST}:{self.controller_port}"
                ),
                "advertised.listeners": f"SASL_PLAINTEXT://{_HOST}:{self.port},INTERNAL://{_HOST}:{self.internal_port}",
                "listener.security.protocol.map": (
                    "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
                ),
                "inter.broker.listener.name": "INTERNAL",
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas + ";",
            }
        props |= self.extra_properties
        return "".join(f"{k}={_prop_escape(v)}\n" for k, v in props.items())

    def _write_config(self) -> Path:
        assert self._dir is not None
        (self._dir.path / "log4j.properties").write_text(_LOG4J)
        path = self._dir.path / "server.properties"
        path.write_text(self.server_properties(), encoding="latin-1")
        return path

    def _java(self, java: str, libs: Path, *args: str, heap: Sequence[str]) -> list[str]:
        assert self._dir is not None
        return [
            java,
            *heap,
            *self.jvm_args,
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self._dir.path / 'log4j.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format(self, java: str, libs: Path, config: Path) -> None:
        assert self._dir is not None
        argv = self._java(
            java,
            libs,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(config),
            "-g",  # --ignore-formatted
            heap=("-Xmx256m", "-XX:TieredStopAtLevel=1"),
        )
        result = subprocess.run(argv, cwd=self._dir.path, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode("utf-8", "replace")
            tail = "\n".join(out.splitlines()[-_LOG_TAIL_LINES:])
            raise BrokerStartError(f"kafka StorageTool format failed ({result.returncode}):\n{tail}")
        self._formatted = True

    def _ready(self) -> bool:
        try:
            if not kafka_metadata_brokers(self.internal_port):
                return False
        except (OSError, ValueError, struct.error):
            return False
        return not self.sasl_users or _tcp_accepts(self.port)

    def start(self) -> None:
        """Format storage on first use, spawn the broker, block until ready (no-op when running)."""
        if self._closed:
            raise RuntimeError("KafkaServer is closed")
        if self.running:
            return
        libs = locate_kafka_libs()
        java = locate_java()
        if self._dir is None:
            self._dir = _TempDir("teb-kafka-")
            self._proc = _Process("kafka", self._dir.path / "kafka.log")
        assert self._proc is not None
        attempts = 3 if not self._started_once else 1
        for attempt in range(attempts):
            config = self._write_config()
            if not self._formatted:
                self._format(java, libs, config)
            heap = (f"-Xms{self.heap_min}", f"-Xmx{self.heap_max}")
            argv = self._java(java, libs, "kafka.Kafka", str(config), heap=heap)
            self._proc.spawn(argv, cwd=self._dir.path)
            what = f"Metadata on port {self.internal_port}"
            try:
                self._proc.wait_ready(self._ready, self.ready_timeout, what)
            except BrokerStartError as exc:
                if attempt + 1 < attempts and _port_clash(exc):
                    self._new_ports()
                    continue
                raise
            break
        self._started_once = True

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``grace`` s; keeps ports and data."""
        if self._proc is not None:
            self._proc.stop(grace)

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same ports and log dirs."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and delete its data directory. Idempotent."""
        self.stop()
        if self._dir is not None:
            self._dir.remove()
            self._dir = None
        self._closed = True

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return self._proc.log_tail(lines) if self._proc is not None else "(not started)"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = _state(self._closed, self._proc)
        sasl = " SASL_PLAINTEXT/PLAIN" if self.sasl_users else ""
        return f"<KafkaServer {self.bootstrap}{sasl} {state} data={self.data_dir}>"


_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""
