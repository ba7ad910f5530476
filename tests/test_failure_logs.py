"""Logs that find the bug (issue 9, item 5): the final failure of a handler is one ERROR record with its
traceback and the event id, aggregate, topic, group and attempt; retries log at DEBUG; the dead letter
carries a one-line, truncated traceback (``X-DLQ-Traceback``).

The issue's row: "a handler raised TypeError -> log line holds repr(exc) only: no traceback, no event id,
aggregate, group or attempt; the dead letter's X-DLQ-Error has no traceback".
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._dispatch.dead_letter import describe_traceback
from trio_eventbus._envelope import freeze_headers


def compute_total(payload: bytes) -> int:
    return sum(payload)  # type: ignore[no-any-return]


async def test_a_handler_typeerror_is_logged_with_traceback_ids_and_attempt(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_eventbus")
    dead: list[teb.Message] = []
    done = trio.Event()
    envelope = teb.Envelope(aggregate_id="order-42", event_type="Placed", event_version=1, payload=b"{}")
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=3, initial_backoff=0.5))
    with trio.fail_after(600):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def on_placed(e: teb.Envelope) -> None:
                total = compute_total(e.payload) + "tax"  # type: ignore[operator]  # the user's bug: TypeError
                print(total)

            async def on_dead(m: teb.Message) -> None:
                dead.append(m)
                done.set()

            await bus.subscribe_envelope("orders", on_placed, group="billing")
            await bus.subscribe("orders.dlq", on_dead, group="ops")
            await bus.publish_envelope("orders", envelope)
            await done.wait()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "retry in" in r.getMessage()]
    print("ERROR:", [r.getMessage() for r in errors])
    print("DEBUG retries:", [r.getMessage() for r in retries])
    (record,) = errors
    assert record.name == "trio_eventbus.dispatch"
    assert record.exc_info is not None
    assert record.exc_info[0] is TypeError
    text = record.getMessage()
    for part in (envelope.event_id, "order-42", "'orders'", "'billing'", "attempt 3", "TypeError"):
        assert part in text, part
    fields = {name: getattr(record, name) for name in ("message_id", "key", "topic", "group", "attempt", "reason")}
    assert fields == {
        "message_id": envelope.event_id,
        "key": "order-42",
        "topic": "orders",
        "group": "billing",
        "attempt": 3,
        "reason": "handler-failed",
    }
    assert "on_placed" in caplog.text  # the formatted traceback names the handler
    assert len(retries) == 2
    assert all("TypeError" in r.getMessage() for r in retries)
    (letter,) = dead
    trace = letter.headers["X-DLQ-Traceback"]
    print("X-DLQ-Traceback:", trace)
    line = on_placed.__code__.co_firstlineno + 1
    assert f"test_failure_logs.py:{line} on_placed" in trace
    assert trace.endswith("TypeError: unsupported operand type(s) for +: 'int' and 'str'")
    assert letter.headers["X-DLQ-Error"].startswith("TypeError: ")


async def test_a_discarded_message_is_logged_at_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    done = trio.Event()
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=1), dead_letter=teb.DeadLetterPolicy(suffix=None))
    with trio.fail_after(5):
        async with teb.open_bus(teb.MemoryConfig(), options=options) as bus:

            async def handler(m: teb.Message) -> None:
                if m.data == b"bad":
                    raise KeyError("sku")
                done.set()

            await bus.subscribe("t", handler, group="svc")
            await bus.publish("t", b"bad", key="k-1", message_id="m-1")
            await bus.publish("t", b"ok", key="k-1")
            await done.wait()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError
    assert "m-1" in record.getMessage()
    assert "discarding" in record.getMessage()


def _raise_deep(depth: int, message: str) -> None:
    if depth == 0:
        raise ValueError(message)
    _raise_deep(depth - 1, message)


def test_the_traceback_header_is_one_bounded_header_safe_line_keeping_the_innermost_frames() -> None:
    try:
        _raise_deep(300, "line one\r\nline two\tand a tab ")
    except ValueError as exc:
        error = exc
    trace = describe_traceback(error)
    print(len(trace), trace[:120], "...", trace[-160:])
    assert len(trace) <= 2000
    assert trace.startswith("... | ")  # outer frames dropped
    assert trace.endswith("ValueError: line one  line two and a tab")
    assert "_raise_deep" in trace.rsplit(" | ", 2)[-2]  # the innermost frame is kept
    freeze_headers({"Traceback": trace})  # the one header rule: printable, one line, no surrounding space


def test_the_traceback_header_names_the_cause() -> None:
    try:
        try:
            int("x")
        except ValueError as exc:
            raise teb.HandlerError("bad total") from exc
    except teb.HandlerError as exc:
        trace = describe_traceback(exc)
    assert trace.endswith("HandlerError: bad total <- ValueError: invalid literal for int() with base 10: 'x'")
