"""CPU per message of the Kafka bus, per thread, beside the plain-asyncio aiokafka program (a profiling aid).

    python -m bench.profile_kafka_cpu [MESSAGES] [ROUNDS] [--bridge thread|trio-asyncio]

Starts a throw-away local broker (as the tests do), runs the end-to-end leg of ``bench --backend kafka`` and
reads the CPU clock of every thread over a 1-second window in the middle of the bus run, then the process CPU
time of the bus run and of the plain-asyncio run, each over the whole run (set-up included: comparable). It
reports figures; it asserts nothing. CPU per message is steadier than msgs/s on a machine whose speed drifts,
but both still move with other load; instruction counts (callgrind) do not.
"""

from __future__ import annotations

import argparse
import threading
import time

import trio

from bench.kafka import _aio_consume, _asyncio_kwargs, _bus_consume, _config, _run_asyncio
from trio_eventbus.backends._bridge.bridge import application_loop
from trio_eventbus.testing.servers import KafkaServer

_WINDOW = 1.0


def _thread_cpu() -> dict[str, float]:
    clocks = {}
    for thread in threading.enumerate():
        if thread.ident is not None:
            clocks[thread.name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return clocks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("messages", nargs="?", type=int, default=150_000)
    parser.add_argument("rounds", nargs="?", type=int, default=2)
    parser.add_argument("--bridge", default="thread", choices=["thread", "trio-asyncio"])
    args = parser.parse_args()
    with KafkaServer() as kafka:
        config = _config(kafka.bootstrap, args.bridge)
        producer_kw, consumer_kw = _asyncio_kwargs(config)

        async def bus() -> tuple[float, dict[str, float]]:
            samples: list[dict[str, float]] = []

            async def sample() -> None:
                await trio.sleep(0.3)
                samples.append(_thread_cpu())
                await trio.sleep(_WINDOW)
                samples.append(_thread_cpu())

            async with application_loop(args.bridge), trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                rate, _ = await _bus_consume(config, args.messages, None)
                nursery.cancel_scope.cancel()
            if len(samples) < 2:
                return rate, {}
            before, after = samples
            return rate, {name: (after[name] - before[name]) / _WINDOW for name in after if name in before}

        trio.run(bus)  # warm-up
        for _ in range(args.rounds):
            started = time.process_time()
            rate, busy = trio.run(bus)
            used = (time.process_time() - started) / args.messages * 1e6
            per_message = {name: f"{share:.2f} core = {share / rate * 1e6:.1f} us/msg" for name, share in busy.items()}
            print(f"bus     {rate:8.0f} msgs/s  {per_message or 'run shorter than the window'}", flush=True)
            print(f"bus     {rate:8.0f} msgs/s  {used:.1f} us/msg of process CPU (whole run, set-up included)")
            started = time.process_time()
            rate, _ = _run_asyncio(_aio_consume, kafka.bootstrap, producer_kw, consumer_kw, args.messages, None)
            used = (time.process_time() - started) / args.messages * 1e6
            print(f"asyncio {rate:8.0f} msgs/s  {used:.1f} us/msg of process CPU (whole run, set-up included)")


if __name__ == "__main__":
    main()
