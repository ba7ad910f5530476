"""The asyncio bridge: the only module that lets Trio code drive an asyncio event loop.

Broker clients (nats-py, aiokafka) are asyncio libraries. Backends run them on a :class:`Bridge` opened with
:func:`open_bridge`, which has two strategies (measurements: DESIGN.md §4):

* ``"thread"`` (the default): a new asyncio loop (uvloop when importable) in a dedicated non-daemon thread
  owned by the bridge. The loop is created explicitly, never through the asyncio policy, because importing
  ``trio_asyncio`` replaces the policy process-wide.
* ``"trio-asyncio"``: the application's running ``trio_asyncio.open_loop()`` loop, shared.

A crossing costs tens to hundreds of microseconds, so cross per *batch*, never per message: :meth:`Bridge.run`
is one crossing (callers hand it a whole batch), :class:`~.inbox.LoopInbox` carries items from Trio to the
loop and :class:`~.pipe.BatchPipe` from the loop to Trio, one wake-up per batch, not per item.

Ordering: callables posted from Trio (starting a ``run``/``spawn`` task, a ``call_soon`` callback) execute on
the loop in posting order. Error policy: an asyncio-side failure that no Trio caller waits for (a spawned
task, a ``call_soon`` callback) cancels the ``open_bridge`` body, as a failing nursery child would, and is
re-raised when the block exits: the original exception if it is the only failure, else a
``BaseExceptionGroup`` of all of them (with the body's own exception first, if any). Nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, ParamSpec, TypeVar, TypeVarTuple

import attrs
import trio

from ..._exceptions import EventBusError

__all__ = ["Bridge", "BridgeError", "BridgeStatistics", "application_loop", "open_bridge"]

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")
_Post = Callable[[Callable[[], object]], object]  # "run this callable soon, over there"

_THREAD_NAME = "trio-eventbus-aio-bridge"
_JOIN_MARGIN = 1.0  # seconds the Trio side waits for the loop beyond the loop's own close_timeout
_thread_ids = itertools.count(1)


class BridgeError(EventBusError):
    """The bridge or its asyncio side broke a rule (a task ignored its cancellation, an unasked cancel)."""


@attrs.frozen
class BridgeStatistics:
    kind: str
    tasks: int  # asyncio tasks the bridge owns now: run() calls in flight + spawned tasks
    crossings: int  # run() calls so far
    spawned: int
    errors: int  # asyncio-side failures recorded (raised when open_bridge exits)
    closing: bool


class _Call(Generic[T]):
    """One :meth:`Bridge.run` crossing. Its fields are written on the loop thread before ``done`` is set."""

    def __init__(self, bridge: Bridge, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> None:
        self.bridge, self.fn, self.args, self.kwargs = bridge, fn, args, kwargs
        self.done = trio.Event()
        self.task: asyncio.Task[None] | None = None
        self.abandoned = False  # Trio stopped waiting (cancellation) before start() ran
        self.started = False  # _drive() is running: it reports through its finally clause
        self.cancelled: asyncio.CancelledError | None = None
        self.error: BaseException | None = None
        self.value: T | None = None

    def start(self) -> None:  # loop thread
        if self.abandoned:  # never even call fn
            self.cancelled = asyncio.CancelledError()
            self.bridge._to_trio(self.done.set)
            return
        self.task = self.bridge.loop.create_task(self._drive())
        self.bridge._tasks[self.task] = self

    async def _drive(self) -> None:  # reports from inside the task: no extra done-callback hop
        self.started = True
        try:
            self.value = await self.fn(*self.args, **self.kwargs)
        except asyncio.CancelledError as exc:
            self.cancelled = exc
            raise
        except GeneratorExit:  # the bridge is closing this coroutine by force
            raise
        except BaseException as exc:  # delivered to the Trio caller, KeyboardInterrupt included
            self.error = exc
        finally:
            self.bridge._tasks.pop(self.task, None)  # type: ignore[arg-type]
            self.bridge._to_trio(self.done.set)

    def cancel(self) -> None:  # loop thread
        if self.task is None:
            return
        if not self.started:  # the cancel is thrown in before the first step: _drive will never report
            self.bridge._tasks.pop(self.task, None)
            self.cancelled = asyncio.CancelledError()
            self.bridge._to_trio(self.done.set)
        self.task.cancel()

    def unwrap(self) -> T:  # Trio thread, after done
        if self.cancelled is not None:
            why = " (the bridge closed)" if self.bridge._closing else ""
            msg = f"asyncio task for {self.fn!r} was cancelled from the asyncio side{why}"
            raise BridgeError(msg) from self.cancelled
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # T may include None


async def _await(fn: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
    await fn(*args)


class Bridge:
    """A running asyncio loop that Trio calls into. Only :func:`open_bridge` creates one.

    ``kind`` is ``"thread"`` or ``"trio-asyncio"``; ``loop`` is the asyncio loop, for client libraries that
    take one. Methods are called from Trio, except :meth:`call_soon` and :meth:`spawn` (any thread).
    """

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop, post: _Post, to_trio: _Post) -> None:
        self.kind = kind
        self.loop = loop
        self._post = post  # run a callable on the loop thread, soon, FIFO
        self._to_trio = to_trio  # run a callable in the Trio thread, soon
        self._owns_loop = kind == "thread"
        self._inline = kind == "trio-asyncio"  # the loop runs in the Trio thread: start/cancel directly
        self._cancel_timeout = self._close_timeout = 0.0
        self._tasks: dict[asyncio.Future[Any], _Call[Any] | None] = {}  # loop thread only
        self._errors: list[BaseException] = []
        self._stuck: list[asyncio.Future[Any]] = []
        self._closing = False
        self._crossings = self._spawned = 0
        self._ready, self._stopped = trio.Event(), trio.Event()
        self._body_scope: trio.CancelScope | None = None
        self._thread: threading.Thread | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Bridge {s.kind} tasks={s.tasks} crossings={s.crossings} errors={s.errors} closing={s.closing}>"

    def statistics(self) -> BridgeStatistics:
        n_tasks, n_errors = len(self._tasks), len(self._errors)
        return BridgeStatistics(self.kind, n_tasks, self._crossings, self._spawned, n_errors, self._closing)

    async def run(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """One crossing: ``await fn(*args, **kwargs)`` in a new asyncio task on the loop; return the result.

        ``fn`` is called inside that task. Its exception propagates as the original object. If the task ends
        with ``CancelledError`` that Trio did not ask for, :class:`BridgeError` is raised.

        Cancellation: when the Trio caller is cancelled, the asyncio task is cancelled and the caller waits,
        shielded, at most ``cancel_timeout`` seconds, until it has really finished: no task outlives the call.
        Then ``trio.Cancelled`` is re-raised, unless the task completed anyway (it had finished already, or
        it swallowed the cancel and returned or raised): that outcome is returned or raised instead, so no
        result is lost (Trio's level-triggered cancellation fires again at the next checkpoint). An asyncio
        function that turns a cancel into another error (nats-py: ``TooManyStalledMsgsError``) should re-raise
        ``CancelledError`` when ``asyncio.current_task().cancelling()`` is non-zero. If the task is still
        running after ``cancel_timeout``, :class:`BridgeError` is raised (chained to the ``Cancelled``); the
        bridge keeps owning the task and cancels it again when it closes.
        """
        self._check_open()
        call: _Call[T] = _Call(self, fn, args, kwargs)
        self._crossings += 1
        if self._inline:
            call.start()
        else:
            self._submit(call.start)
        try:
            await call.done.wait()
        except BaseException as exc:
            call.abandoned = True
            if self._inline:
                call.cancel()
            else:
                self._submit(call.cancel, quiet=True)
            with trio.move_on_after(self._cancel_timeout, shield=True):
                await call.done.wait()
            if not call.done.is_set():
                msg = f"asyncio task for {fn!r} ignored cancellation for {self._cancel_timeout} s, still runs"
                raise BridgeError(msg) from exc
            if call.cancelled is not None or not isinstance(exc, trio.Cancelled):
                raise
        return call.unwrap()

    def call_soon(self, fn: Callable[[*Ts], object], /, *args: *Ts) -> None:
        """Fire-and-forget ``fn(*args)`` on the loop thread: thread-safe, FIFO, no wait for a crossing.

        An exception raised by ``fn`` is a bridge failure (see the module docstring).
        """
        self._check_open()
        self._submit(functools.partial(self._guarded, fn, args))

    def spawn(self, fn: Callable[[*Ts], Awaitable[object]], /, *args: *Ts, name: str | None = None) -> None:
        """Start ``await fn(*args)`` as a long-running asyncio task owned by the bridge (fire-and-forget).

        The task starts soon, in posting order; when the bridge closes it is cancelled and awaited. If it
        raises, or is cancelled by anything but the bridge, that is a bridge failure (see module docstring).
        """
        self._check_open()
        self._spawned += 1
        self._submit(functools.partial(self._start_spawned, fn, args, name))

    # -- internals -------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise BridgeError(f"{self!r} is closed")

    def _submit(self, fn: Callable[[], object], *, quiet: bool = False) -> None:
        try:
            self._post(fn)
        except RuntimeError as exc:  # "Event loop is closed"
            if not quiet:
                raise BridgeError(f"{self!r}: the asyncio loop is gone") from exc

    def _fail(self, exc: BaseException) -> None:  # any thread
        self._errors.append(exc)
        self._to_trio(self._cancel_body)

    def _cancel_body(self) -> None:  # Trio thread
        if self._body_scope is not None:
            self._body_scope.cancel()

    def _guarded(self, fn: Callable[..., object], args: tuple[object, ...]) -> None:  # loop thread
        try:
            fn(*args)
        except Exception as exc:
            self._fail(exc)

    def _start_spawned(self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...], name: str | None) -> None:
        task = self.loop.create_task(_await(fn, args), name=name)
        self._tasks[task] = None
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Future[Any]) -> None:  # loop thread
        self._tasks.pop(task, None)
        if task.cancelled():
            if not self._closing:
                self._fail(BridgeError(f"spawned asyncio task {task!r} was cancelled from the asyncio side"))
        elif (exc := task.exception()) is not None:
            self._fail(exc)

    def _release_callers(self) -> None:  # loop thread: run() callers are never left hanging
        for call in self._tasks.values():
            if call is not None and not call.done.is_set():
                call.error = BridgeError("the bridge closed while this call was running")
                self._to_trio(call.done.set)

    def _begin_shutdown(self) -> None:  # loop thread
        self._shutdown_task = self.loop.create_task(self._shutdown(), name="trio-eventbus bridge shutdown")

    async def _shutdown(self) -> None:  # loop thread: tear down everything the bridge owns, bounded
        loop = self.loop
        deadline = loop.time() + self._close_timeout
        try:
            await self._cancel_and_wait(list(self._tasks), deadline)
            if self._owns_loop:  # like asyncio.run(): library tasks, async generators, executor threads
                me = asyncio.current_task()
                others = [t for t in asyncio.all_tasks() if t is not me and t not in self._stuck]
                await self._cancel_and_wait(others, deadline)
                for shutdown in (loop.shutdown_asyncgens, loop.shutdown_default_executor):
                    await self._cancel_and_wait([loop.create_task(shutdown())], deadline, cancel=False)
        finally:
            self._release_callers()
            if self._owns_loop:
                loop.stop()
            else:
                self._to_trio(self._stopped.set)

    async def _cancel_and_wait(
        self, tasks: Sequence[asyncio.Future[Any]], deadline: float, *, cancel: bool = True
    ) -> None:
        if not (pending := [t for t in tasks if not t.done()]):
            return
        for task in pending if cancel else ():
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=max(0.0, deadline - self.loop.time()))
        if still:
            self._stuck.extend(still)
            names = sorted(map(repr, still))
            msg = f"{len(still)} asyncio task(s) did not finish within close_timeout={self._close_timeout} s"
            self._errors.append(BridgeError(f"{msg} after cancellation: {names}"))

    def _thread_main(self) -> None:  # the loop thread (thread kind only)
        loop = self.loop
        try:
            loop.call_soon(self._to_trio, self._ready.set)
            loop.run_forever()
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            try:
                if not self._closing:
                    self._fail(BridgeError("the asyncio loop thread stopped unexpectedly"))
                for task in self._stuck:  # they ignored cancellation: close their coroutines (runs finally:)
                    if isinstance(task, asyncio.Task):
                        try:
                            task.get_coro().close()
                        except RuntimeError as exc:  # "coroutine ignored GeneratorExit"
                            self._errors.append(exc)
                self._release_callers()
                loop.close()
            finally:
                self._to_trio(self._ready.set)
                self._to_trio(self._stopped.set)

    async def _aclose(self) -> None:  # Trio thread; the caller shields it
        self._closing = True
        self._submit(self._begin_shutdown, quiet=True)
        with trio.move_on_after(self._close_timeout + _JOIN_MARGIN):
            await self._stopped.wait()
        if not self._stopped.is_set():
            self._errors.append(BridgeError(f"the loop of {self!r} did not stop: a thread or tasks leak"))
        elif self._thread is not None:
            self._thread.join()  # it signalled from its very last step: this returns at once


def _running_trio_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    # Only look if the application imported trio_asyncio: importing it here would replace the asyncio loop
    # policy of the whole process.
    module = sys.modules.get("trio_asyncio")
    loop: asyncio.AbstractEventLoop | None = None if module is None else module.current_loop.get()
    if loop is None or loop.is_closed() or not loop.is_running():
        return None
    return loop


def _new_loop(use_uvloop: bool | None) -> asyncio.AbstractEventLoop:
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError as exc:
            if use_uvloop:
                raise BridgeError("use_uvloop=True but uvloop is not installed") from exc
        else:
            return uvloop.new_event_loop()
    if sys.platform == "win32":
        return asyncio.ProactorEventLoop()
    return asyncio.SelectorEventLoop()  # explicitly: never through the (maybe trio_asyncio) policy


def _call_now(fn: Callable[[], object]) -> None:
    fn()


class _PostFromAnyThread:
    """Post to a trio-asyncio loop: directly from its own (the Trio) thread, else through the Trio token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._thread_id = loop, threading.get_ident()

    def __call__(self, fn: Callable[[], object]) -> None:
        if threading.get_ident() == self._thread_id:
            self._loop.call_soon(fn)
        else:
            self._loop.call_soon_threadsafe(fn)


class _ToTrio:
    """Run a callable in the Trio thread, soon, in call order (thread kind).

    Every ``run_sync_soon`` writes to Trio's wake-up socket, a system call that releases the GIL, which the
    calling loop thread must then win back from a busy Trio thread. So callables posted while an earlier post
    has not run yet ride along with it: one wake-up per batch of callables, not per callable.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._run_sync_soon = token.run_sync_soon
        self._lock = threading.Lock()
        self._pending: list[Callable[[], object]] = []
        self.calls = self.posts = 0

    def __call__(self, fn: Callable[[], object]) -> None:
        with self._lock:
            self.calls += 1
            self._pending.append(fn)
            if len(self._pending) > 1:  # a post is on its way and will run this one too
                return
            self.posts += 1
        try:
            self._run_sync_soon(self._run_pending)
        except trio.RunFinishedError:  # the Trio run is over: nobody is left to tell
            pass

    def _run_pending(self) -> None:  # Trio thread
        with self._lock:
            pending, self._pending = self._pending, []
        for fn in pending:  # none raises (Event.set and the like); one that did would crash the run anyway
            fn()


def _make_bridge(kind: str, use_uvloop: bool | None) -> Bridge:
    if kind == "auto":
        kind = "thread" if _running_trio_asyncio_loop() is None else "trio-asyncio"
    if kind == "trio-asyncio":
        if (loop := _running_trio_asyncio_loop()) is None:
            raise BridgeError("kind='trio-asyncio' needs a running `async with trio_asyncio.open_loop():`")
        bridge = Bridge(kind, loop, _PostFromAnyThread(loop), _call_now)
        bridge._ready.set()
        return bridge
    if kind != "thread":
        raise ValueError(f"unknown bridge kind {kind!r}")
    loop = _new_loop(use_uvloop)
    bridge = Bridge(kind, loop, loop.call_soon_threadsafe, _ToTrio(trio.lowlevel.current_trio_token()))
    bridge._thread = threading.Thread(target=bridge._thread_main, name=f"{_THREAD_NAME}-{next(_thread_ids)}")
    try:
        bridge._thread.start()
    except BaseException:
        loop.close()
        raise
    return bridge


@asynccontextmanager
async def application_loop(bridge: str) -> AsyncIterator[None]:
    """For ``bridge == "trio-asyncio"``, run the block inside a new ``trio_asyncio.open_loop()``, as an
    application already on trio-asyncio would (benchmarks and tests use it); otherwise do nothing.

    Kept here so that this module stays the only one of the package that touches trio-asyncio.
    """
    if bridge != "trio-asyncio":
        yield
        return
    import trio_asyncio

    async with trio_asyncio.open_loop():
        yield


@asynccontextmanager
async def open_bridge(
    kind: Literal["auto", "thread", "trio-asyncio"] = "auto",
    *,
    use_uvloop: bool | None = None,
    cancel_timeout: float = 2.0,
    close_timeout: float = 5.0,
) -> AsyncIterator[Bridge]:
    """Open a :class:`Bridge`; it is running when the block starts and closed when the block ends.

    ``kind="auto"``: share the ``trio_asyncio`` loop running in this task's context, if any, else
    ``"thread"``. ``use_uvloop`` (thread kind): ``None`` = uvloop if importable, ``False`` = plain asyncio,
    ``True`` = uvloop or :class:`BridgeError`. ``cancel_timeout`` bounds how long a cancelled
    :meth:`Bridge.run` waits for its asyncio task; ``close_timeout`` bounds the teardown.

    Close (also on error or cancellation; shielded and bounded): refuse new work, cancel and await every task
    the bridge owns; for the thread kind also every other task on its loop, async generators and the default
    executor, then stop and close the loop and join the thread. Tasks still running after ``close_timeout``
    are reported as :class:`BridgeError` (thread kind: their coroutines are then closed by force).
    """
    bridge = _make_bridge(kind, use_uvloop)
    bridge._cancel_timeout, bridge._close_timeout = cancel_timeout, close_timeout
    body_error: BaseException | None = None
    try:
        await bridge._ready.wait()
        if bridge._stopped.is_set():
            raise BridgeError("the asyncio loop thread failed to start")
        with trio.CancelScope() as bridge._body_scope:
            yield bridge
    except BaseException as exc:
        body_error = exc
        raise
    finally:
        with trio.CancelScope(shield=True):
            await bridge._aclose()
        if errors := list(bridge._errors):
            if body_error is not None and not isinstance(body_error, trio.Cancelled):
                errors.insert(0, body_error)
            if len(errors) == 1:
                raise errors[0]
            raise BaseExceptionGroup(f"{len(errors)} failures on the asyncio side of the bridge", errors)
