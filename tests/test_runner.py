"""teb.serve / teb.run: signals (a real child process, tests/runner_child.py), main returning or raising, and
the Subscribers registry under the runner.

The child is synchronised with through the lines it writes (``ready`` on stdout, the runner's log lines on
stderr), never with sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

import trio_eventbus as teb

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "runner_child.py"


@attrs.define
class Child:
    """A running tests/runner_child.py: its output so far, and events for the lines the tests wait on."""

    process: trio.Process
    stdout: list[str] = attrs.field(factory=list)
    stderr: list[str] = attrs.field(factory=list)
    ready: trio.Event = attrs.field(factory=trio.Event)
    closing: trio.Event = attrs.field(factory=trio.Event)

    async def read(self, stream: trio.abc.ReceiveStream, lines: list[str]) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode()
                lines.append(line)
                if line == "ready":
                    self.ready.set()
                if "closing the bus gracefully" in line:
                    self.closing.set()
        if buffer:
            lines.append(buffer.decode())

    def figures(self) -> dict[str, str]:
        """``handled=.. pending=.. closed=..`` of the child's last stdout line."""
        return dict(item.split("=") for item in self.stdout[-1].split())


async def run_child(mode: str, nursery: trio.Nursery) -> Child:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    child = Child(process)
    assert process.stdout is not None
    assert process.stderr is not None
    nursery.start_soon(child.read, process.stdout, child.stdout)
    nursery.start_soon(child.read, process.stderr, child.stderr)
    return child


async def test_sigterm_closes_gracefully_the_handler_mid_message_finishes_and_is_acked() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            child = await run_child("graceful", nursery)
            await child.ready.wait()  # the first message is being handled
            child.process.send_signal(signal.SIGTERM)
            rc = await child.process.wait()
    figures = child.figures()
    print(f"rc={rc} {figures} log={child.stderr}")
    assert rc == 0, child.stderr
    assert figures == {"handled": "3", "pending": "0", "closed": "True"}  # all handled and acked, none nak'ed
    log = "\n".join(child.stderr)
    assert "INFO trio_eventbus.bus: received SIGTERM: closing the bus gracefully" in log
    assert "INFO trio_eventbus.bus: the bus closed gracefully" in log
    assert "Traceback" not in log


async def test_a_second_sigint_while_closing_is_a_hard_stop() -> None:
    # close_timeout is 20 s in the child and its handler never returns: only the hard stop ends the close early
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            child = await run_child("hard", nursery)
            await child.ready.wait()
            child.process.send_signal(signal.SIGINT)
            await child.closing.wait()  # the runner logged the first signal: the graceful close has begun
            second = trio.current_time()
            child.process.send_signal(signal.SIGINT)
            rc = await child.process.wait()
            took = trio.current_time() - second
    figures = child.figures()
    print(f"rc={rc} exit {took:.2f}s after the second signal, {figures}")
    assert rc == 0, child.stderr
    assert took < 10.0  # the hard-stop grace is 3 s; the close would have waited up to close_timeout (20 s)
    # the stuck handler was cancelled: nothing handled, its message and the two queued behind it nak'ed (not acked)
    assert figures == {"handled": "0", "pending": "3", "closed": "True"}
    log = "\n".join(child.stderr)
    assert "WARNING trio_eventbus.bus: received SIGINT while closing: hard stop" in log
    assert "the bus stopped (hard stop)" in log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log


async def test_main_returning_closes_the_bus_and_the_process_exits_0() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            child = await run_child("return", nursery)
            rc = await child.process.wait()
    print(f"rc={rc} {child.figures()}")
    assert rc == 0, child.stderr
    assert child.figures() == {"handled": "3", "pending": "0", "closed": "True"}
    assert "Traceback" not in "\n".join(child.stderr)


# -- in process (no signals) -------------------------------------------------------------------------------------


async def test_main_raising_closes_the_bus_gracefully_and_propagates_unwrapped() -> None:
    broker = teb.MemoryBroker()
    handled: list[bytes] = []
    buses: list[teb.EventBus] = []

    started = trio.Event()

    async def on_job(message: teb.Message) -> None:
        started.set()
        await trio.sleep(0.01)  # slow work: the close waits for it
        handled.append(message.data)

    async def main(bus: teb.EventBus) -> None:
        buses.append(bus)
        await bus.subscribe("jobs", on_job, group="svc")
        await bus.publish("jobs", b"x", key="k")
        await started.wait()
        raise LookupError("the service failed")

    with trio.fail_after(10), pytest.raises(LookupError, match="the service failed"):
        await teb.serve(teb.MemoryConfig(broker=broker), main, signals=())
    assert handled == [b"x"]  # the handler that was running finished: a graceful close
    assert broker.topic_statistics("jobs")["pending[svc]"] == 0
    with pytest.raises(teb.BusClosedError):
        await buses[0].publish("jobs", b"late")


async def test_serve_registers_subscribers_before_main() -> None:
    subscribers = teb.Subscribers()
    got: list[str] = []

    @subscribers.subscriber("orders", envelope=True)
    async def on_order(event: teb.Envelope) -> None:
        got.append(event.aggregate_id)

    async def main(bus: teb.EventBus) -> None:
        await bus.publish_envelope(
            "orders", teb.Envelope(aggregate_id="o-1", event_type="T", event_version=1, payload=b"{}")
        )
        await bus.wait_idle()

    with trio.fail_after(10):
        await teb.serve(teb.MemoryConfig(), main, options=teb.BusOptions(service="shop"), subscribers=subscribers)
    assert got == ["o-1"]


async def test_serve_without_a_group_fails_at_subscribe_all() -> None:
    subscribers = teb.Subscribers()
    subscribers.subscriber("orders")(on_nothing)
    with trio.fail_after(10), pytest.raises(teb.InvalidOptionError, match="needs a consumer group"):
        await teb.serve(teb.MemoryConfig(), subscribers=subscribers, signals=())


async def on_nothing(message: teb.Message) -> None:
    pass
