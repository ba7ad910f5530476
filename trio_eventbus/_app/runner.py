"""serve / run: run a service on the bus until it ends or the process is told to stop.

``main(bus)`` is the service body: it subscribes, starts the application's own tasks, and usually ends with
``await trio.sleep_forever()``. The runner opens the bus (``open_bus(config, options=options)``), registers
``subscribers`` (a :class:`~trio_eventbus.Subscribers`) first when given, calls ``main(bus)``, and stops:

- **main returns**: the bus closes gracefully and ``serve`` returns;
- **main raises**: the bus closes gracefully and the exception comes out of ``serve`` (as itself);
- **first SIGINT or SIGTERM** (``signals``): logged at INFO on ``trio_eventbus.bus``; ``main`` is cancelled
  (its own cancel scope: the code after ``main``'s awaits does not run) and the bus closes gracefully: fetchers
  stop, handlers finish what they hold and ack it, queued publishes are flushed and their results delivered,
  all within ``BusOptions.close_timeout``; then ``serve`` returns normally (the process exits with status 0);
- **second signal while closing**: logged at WARNING; a hard stop. The whole bus is cancelled: handlers are
  cancelled and their messages nak'ed (redelivered later: at least once), acks of messages already handled
  are flushed within the one hard-stop grace, and ``serve`` returns normally;
- a signal before the bus is open (still connecting) stops at once.

While ``serve`` runs, the signals are received by Trio (:func:`trio.open_signal_receiver`), so SIGINT does
not raise ``KeyboardInterrupt``; ``serve`` must run in the main thread when ``signals`` is not empty
(``signals=()`` handles none: for tests, or an application that handles signals itself).

Cancellation of ``serve`` from outside is a hard stop of the bus (see :func:`~trio_eventbus.open_bus`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import attrs
import trio

from .._bus import EventBus
from .._lifecycle import BackendConfig, open_bus
from .._options import BusOptions
from .subscribers import Subscribers

__all__ = ["Main", "run", "serve"]

logger = logging.getLogger("trio_eventbus.bus")

#: The service body: ``async def main(bus: EventBus) -> None``.
Main = Callable[[EventBus], Awaitable[object]]
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@attrs.define(slots=True, eq=False)
class _Stop:
    """The two stops of a runner: ``main`` (graceful: its scope is cancelled) and ``hard`` (the whole bus)."""

    main: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    hard: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    opened: bool = False
    signals: int = 0

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        name = _signal_name(signum)
        if self.signals == 1 and self.opened:
            logger.info("received %s: closing the bus gracefully (a second signal stops at once)", name)
            self.main.cancel()
        elif self.signals == 1:
            logger.info("received %s before the bus was open: stopping", name)
            self.hard.cancel()
        elif self.signals == 2:
            logger.warning("received %s while closing: hard stop (unsettled messages will be redelivered)", name)
            self.hard.cancel()
        else:
            logger.debug("received %s again: already stopping", name)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


async def _watch(signals: AsyncIterator[int], stop: _Stop) -> None:
    async for signum in signals:
        stop.on_signal(signum)


@contextlib.contextmanager
def _receiver(signals: tuple[int, ...]) -> Iterator[AsyncIterator[int] | None]:
    if not signals:
        yield None
        return
    with trio.open_signal_receiver(*signals) as received:
        yield received


async def serve(
    config: BackendConfig,
    main: Main | None = None,
    *,
    options: BusOptions | None = None,
    subscribers: Subscribers | None = None,
    signals: Iterable[int] = _DEFAULT_SIGNALS,
) -> None:
    """Run ``main(bus)`` on a bus opened on ``config``; stop gracefully on the first of ``signals``, at once on
    the second (see the module docstring). ``main=None`` runs until a signal (a service made only of
    ``subscribers``).

    Raises what ``open_bus`` raises (:class:`~trio_eventbus.BackendUnavailable`, ...) and what ``main`` raises,
    after the graceful close. Always a checkpoint.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    stop = _Stop()
    with _receiver(tuple(signals)) as received:
        try:
            async with trio.open_nursery() as nursery:
                if received is not None:
                    nursery.start_soon(_watch, received, stop, name="teb-signals")
                try:
                    with stop.hard:
                        async with open_bus(config, options=options) as bus:
                            stop.opened = True
                            with stop.main:
                                if subscribers is not None:
                                    await subscribers.subscribe_all(bus)
                                if main is None:
                                    await trio.sleep_forever()
                                else:
                                    await main(bus)
                    if stop.hard.cancelled_caught:
                        logger.info("the bus stopped (hard stop)")
                    elif stop.signals:
                        logger.info("the bus closed gracefully")
                finally:
                    nursery.cancel_scope.cancel()  # the signal watcher
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
                exc = group.exceptions[0]
                raise exc from exc.__cause__
            raise


def run(
    config: BackendConfig,
    main: Main | None = None,
    *,
    options: BusOptions | None = None,
    subscribers: Subscribers | None = None,
    signals: Iterable[int] = _DEFAULT_SIGNALS,
) -> None:
    """:func:`serve` in a new Trio run (``trio.run``): the entry point of a service process::

    if __name__ == "__main__":
        teb.run(teb.config_from_env(), main, options=teb.BusOptions(service="shipping"))
    """
    trio.run(functools.partial(serve, config, main, options=options, subscribers=subscribers, signals=signals))
