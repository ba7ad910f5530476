"""Process plumbing shared by the broker managers in :mod:`trio_eventbus.testing.servers`.

Spawning and reaping (with the ``atexit`` and ``PR_SET_PDEATHSIG`` safety nets), private temp directories,
readiness polling, and :class:`_ManagedServer`, the lifecycle both :class:`~.servers.NatsServer` and
:class:`~.servers.KafkaServer` share. Private: import the public names from :mod:`.servers`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 40


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


class _ManagedServer:
    """Lifecycle shared by the broker managers: one process in one private temp directory.

    A subclass sets the class constants, implements ``start()`` as: ``if not self._should_start(): return``,
    locate its binaries, ``self._ensure_workdir()``, then :meth:`_spawn_until_ready`. ``stop()``,
    ``restart()``, ``close()``, ``log_tail()`` and the ``with`` protocol are common.
    """

    #: Name in "… is closed" errors and in ``repr``.
    _KIND: ClassVar[str]
    #: Prefix of the temp directory, the process name in start-up errors, and its log file's name.
    _DIR_PREFIX: ClassVar[str]
    _PROC_NAME: ClassVar[str]
    _LOG_NAME: ClassVar[str]
    #: Default seconds between SIGTERM and SIGKILL in :meth:`stop`.
    _STOP_GRACE: ClassVar[float]

    def __init__(self, *, ready_timeout: float) -> None:
        self.ready_timeout = ready_timeout
        self._dir: _TempDir | None = None
        self._proc: _Process | None = None
        self._started_once = False
        self._closed = False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def start(self) -> None:
        """Spawn the broker and block until it is ready (no-op when running); see the subclasses."""
        raise NotImplementedError

    def _should_start(self) -> bool:
        """False when already running; RuntimeError when closed."""
        if self._closed:
            raise RuntimeError(f"{self._KIND} is closed")
        return not self.running

    def _ensure_workdir(self) -> Path:
        """The temp directory (created with the process record on first use)."""
        if self._dir is None:
            self._dir = _TempDir(self._DIR_PREFIX)
            self._proc = _Process(self._PROC_NAME, self._dir.path / self._LOG_NAME)
        return self._dir.path

    def _spawn_until_ready(
        self,
        argv: Callable[[], Sequence[str]],
        ready: Callable[[], bool],
        what: Callable[[], str],
        new_ports: Callable[[], None] | None,
    ) -> None:
        """Spawn ``argv()``, wait for ``ready()``; on a port clash, call ``new_ports()`` and try again.

        ``what()`` names the readiness condition in the timeout error. Up to 3 attempts on the first start;
        one attempt without ``new_ports`` (fixed ports) or after a successful start (ports must stay the same).
        """
        assert self._dir is not None
        assert self._proc is not None
        attempts = 3 if new_ports is not None and not self._started_once else 1
        for attempt in range(attempts):
            self._proc.spawn(argv(), cwd=self._dir.path)
            try:
                self._proc.wait_ready(ready, self.ready_timeout, what())
            except BrokerStartError as exc:
                if new_ports is not None and attempt + 1 < attempts and _port_clash(exc):
                    new_ports()
                    continue
                raise
            break
        self._started_once = True

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the broker, SIGKILL after ``grace`` s (default: 10 for nats-server, 30 for Kafka).

        Keeps ports and the data directory, so ``start()`` brings back the same broker.
        """
        if self._proc is not None:
            self._proc.stop(self._STOP_GRACE if grace is None else grace)

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same ports and data directory."""
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

    def _state(self) -> str:
        if self._closed:
            return "closed"
        pid = self._proc.pid if self._proc is not None else None
        return f"running pid={pid}" if pid is not None else "stopped"

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
