"""``python -m bench.envelope_path [--messages N] [--rounds R] [--json] [--callgrind]``: the envelope path's cost.

Figures (issue 15, goal 1), all from one invocation:

- ``build_us``, ``encode_us``, ``decode_us``: microseconds per envelope with a 250-byte JSON payload, each the
  median of ``rounds`` timed loops of ``--ops`` calls: ``Envelope(aggregate_id=..., event_type=...,
  event_version=1, payload=...)`` (a new event id and timestamp each), ``encode_envelope(env)``,
  ``decode_envelope(body, headers)``. ``build_encode_us`` is the sum of the first two.
- ``raw_msgs_per_s`` / ``envelope_msgs_per_s`` / ``ratio``: one memory bus, two topics with a subscriber each,
  100 aggregates. The raw leg publishes the 250-byte payload with ``publish_nowait(topic, payload,
  key=aggregate)`` to a raw subscriber; the envelope leg builds an envelope of the same payload and publishes it
  with ``publish_envelope_nowait`` to ``subscribe_envelope`` (both await their async form only when the window
  is full). Throughput runs from the first publish to the last handler call. The legs alternate ``rounds``
  times; ``ratio`` is the median of the per-round ratios (envelope / raw), the other figures are medians.

``--callgrind`` (needs valgrind, ~2 minutes) adds the deterministic figures: instructions per message of each leg
(``callgrind_raw_instr``, ``callgrind_envelope_instr``: (count(N2) - count(N1)) / (N2 - N1) of one leg run alone
in a fresh process, ``PYTHONHASHSEED=0``) and their ratio (``callgrind_ratio`` = raw / envelope: the throughput
ratio the legs would have on an unloaded core).

The memory backend hands the envelope object to envelope subscribers without decoding it (see
``trio_eventbus.backends.memory``), so the envelope leg pays building + encoding + the bus; ``decode_us`` is
what a broker subscriber pays on top.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import trio

from trio_eventbus import BusOptions, Envelope, MemoryConfig, Message, open_bus
from trio_eventbus._codec import decode_envelope, encode_envelope

__all__ = ["PAYLOAD", "bench_envelope_path"]


def _payload(size: int = 250) -> bytes:
    base = {
        "order_id": "ord-000123",
        "customer": "cust-42",
        "items": [{"sku": "A-1", "qty": 2, "price": 12.5}, {"sku": "B-7", "qty": 1, "price": 99.0}],
        "currency": "EUR",
        "note": "",
    }
    text = json.dumps(base, separators=(",", ":"))
    base["note"] = "x" * (size - len(text))
    out = json.dumps(base, separators=(",", ":")).encode()
    assert len(out) == size, len(out)
    return out


#: The 250-byte compact JSON payload of every figure.
PAYLOAD = _payload()
AGGREGATES = [f"order-{i}" for i in range(100)]


def _per_op_us(fn: Callable[[], object], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops * 1e6


def codec_costs(ops: int, rounds: int) -> dict[str, float]:
    """Median µs per build, encode and decode of an envelope with :data:`PAYLOAD`."""
    env = Envelope(aggregate_id="order-1", event_type="OrderPlaced", event_version=1, payload=PAYLOAD)
    body, headers = encode_envelope(env)
    builds, encodes, decodes = [], [], []
    for _ in range(rounds):
        builds.append(
            _per_op_us(
                lambda: Envelope(aggregate_id="order-1", event_type="OrderPlaced", event_version=1, payload=PAYLOAD),
                ops,
            )
        )
        encodes.append(_per_op_us(lambda: encode_envelope(env), ops))
        decodes.append(_per_op_us(lambda: decode_envelope(body, headers), ops))
    build, encode = statistics.median(builds), statistics.median(encodes)
    return {
        "build_us": build,
        "encode_us": encode,
        "build_encode_us": build + encode,
        "decode_us": statistics.median(decodes),
        "body_bytes": float(len(body)),
    }


async def _leg(bus: object, messages: int, envelopes: bool, counter: list[int], done: list[trio.Event]) -> float:
    from trio_eventbus import EventBus

    assert isinstance(bus, EventBus)
    counter[0] = 0
    done[0] = trio.Event()
    n = len(AGGREGATES)
    clock = time.perf_counter
    start = clock()
    if envelopes:
        for i in range(messages):
            env = Envelope(aggregate_id=AGGREGATES[i % n], event_type="OrderPlaced", event_version=1, payload=PAYLOAD)
            try:
                bus.publish_envelope_nowait("bench.envelopes", env)
            except trio.WouldBlock:
                await bus.publish_envelope("bench.envelopes", env)
    else:
        for i in range(messages):
            key = AGGREGATES[i % n]
            try:
                bus.publish_nowait("bench.raw", PAYLOAD, key=key)
            except trio.WouldBlock:
                await bus.publish("bench.raw", PAYLOAD, key=key)
    await done[0].wait()
    return messages / (clock() - start)


async def bench_envelope_path(*, messages: int = 20_000, rounds: int = 5, ops: int = 20_000) -> dict[str, float]:
    """Codec costs, then the raw and envelope legs alternated on one memory bus; medians and the ratio."""
    out: dict[str, float] = {"messages": float(messages), "rounds": float(rounds), "payload_bytes": 250.0}
    out |= codec_costs(ops, rounds)
    counter = [0]
    done = [trio.Event()]
    target = [messages]

    async def on_raw(message: Message) -> None:
        counter[0] += 1
        if counter[0] == target[0]:
            done[0].set()

    async def on_envelope(envelope: Envelope) -> None:
        counter[0] += 1
        if counter[0] == target[0]:
            done[0].set()

    raw: list[float] = []
    env: list[float] = []
    ratios: list[float] = []
    async with open_bus(MemoryConfig(), options=BusOptions(service="bench")) as bus:
        await bus.subscribe("bench.raw", on_raw)
        await bus.subscribe_envelope("bench.envelopes", on_envelope)
        target[0] = 1000  # warm-up: the lanes of every aggregate exist, code paths are warm
        await _leg(bus, 1000, False, counter, done)
        await _leg(bus, 1000, True, counter, done)
        target[0] = messages
        for i in range(rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            figures = {}
            for envelopes in order:
                figures[envelopes] = await _leg(bus, messages, envelopes, counter, done)
            raw.append(figures[False])
            env.append(figures[True])
            ratios.append(figures[True] / figures[False])
    out["raw_msgs_per_s"] = statistics.median(raw)
    out["envelope_msgs_per_s"] = statistics.median(env)
    out["ratio"] = statistics.median(ratios)
    out["ratio_min"] = min(ratios)
    out["ratio_max"] = max(ratios)
    return out


async def _load(leg: str, messages: int) -> None:
    """One leg alone (for callgrind): ``messages`` publishes and their handling on a fresh bus."""
    counter = [0]
    done = [trio.Event()]

    def count() -> None:
        counter[0] += 1
        if counter[0] == messages:
            done[0].set()

    async def on_raw(message: Message) -> None:
        count()

    async def on_envelope(envelope: Envelope) -> None:
        count()

    async with open_bus(MemoryConfig(), options=BusOptions(service="bench")) as bus:
        await bus.subscribe("bench.raw", on_raw)
        await bus.subscribe_envelope("bench.envelopes", on_envelope)
        await _leg(bus, messages, leg == "envelope", counter, done)


def _callgrind(small: int = 2_000, large: int = 10_000) -> dict[str, float]:
    import os
    import re
    import subprocess
    import tempfile

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=here)

    def count(leg: str, n: int) -> int:
        with tempfile.TemporaryFile() as err:
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
                 "bench.envelope_path", "--load", leg, "--messages", str(n)],
                cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=err, check=True,
            )  # fmt: skip
            err.seek(0)
            found = re.search(rb"Collected : (\d+)", err.read())
            assert found, "valgrind printed no instruction count"
            return int(found.group(1))

    out = {}
    for leg in ("raw", "envelope"):
        out[f"callgrind_{leg}_instr"] = float((count(leg, large) - count(leg, small)) // (large - small))
    out["callgrind_ratio"] = out["callgrind_raw_instr"] / out["callgrind_envelope_instr"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.envelope_path``."""
    parser = argparse.ArgumentParser(prog="python -m bench.envelope_path", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per bus leg (default 20,000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--ops", type=int, default=20_000, help="calls per timed codec loop (default 20,000)")
    parser.add_argument("--json", action="store_true", help="print one machine-readable line")
    parser.add_argument("--callgrind", action="store_true", help="add instructions per message of each leg")
    parser.add_argument("--load", choices=("raw", "envelope"), help=argparse.SUPPRESS)  # one leg, for callgrind
    args = parser.parse_args(argv)
    if args.load:
        trio.run(_load, args.load, args.messages)
        return 0
    figures = trio.run(lambda: bench_envelope_path(messages=args.messages, rounds=args.rounds, ops=args.ops))
    if args.callgrind:
        figures |= _callgrind()
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            shown = f"{value:,.0f}" if value >= 100 else f"{value:.3f}"
            print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
