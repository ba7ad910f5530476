"""The command line, the demo and the examples run end to end on the memory backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trio_eventbus as teb
from bench.memory import bench_memory
from trio_eventbus.cli.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in the checkout, importing this tree's ``trio_eventbus`` (scripts under examples/ too)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=environ
    )


def test_demo_command_reports_zero_violations() -> None:
    proc = run("-m", "trio_eventbus", "demo", "--orders", "60", "--events", "5", "--lanes", "4")
    assert proc.returncode == 0, proc.stderr
    assert "order violations 0" in proc.stdout
    assert "published        300 envelopes (300 ok results, 0 failed)" in proc.stdout
    assert "100%" in proc.stderr  # the progress bar


async def test_demo_checks_per_aggregate_order() -> None:
    with trio.fail_after(30):
        report = await run_demo(teb.MemoryConfig(), orders=40, events_per_order=6, lanes=3)
    assert report.violations == 0
    assert report.handled == report.published == 240
    assert report.results_ok == 240
    assert report.statistics.handled == 240


async def test_bench_harness_reports_figures() -> None:
    with trio.fail_after(60):
        figures = await bench_memory(messages=2_000, aggregates=50, rounds=1, paced_messages=200, rate=4_000)
    for key in ("bare_msgs_per_s", "bus_msgs_per_s", "ratio_throughput", "paced_bus_p99_ms", "encode_us"):
        assert figures[key] > 0, key
    assert figures["bus_results_ok"] == 2_000


def test_bench_json_is_one_line() -> None:
    proc = run("-m", "bench", "--json", "--messages", "1000", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    figures = json.loads(line)
    assert figures["backend"] == "memory"
    assert figures["messages"] == 1000


def test_examples_run() -> None:
    producer = run("examples/producer.py", "--orders", "20", TEB_URL="memory://")
    assert producer.returncode == 0, producer.stderr
    assert "published 60 events, 0 unconfirmed" in producer.stdout
    consumer = run("examples/consumer.py", TEB_URL="")  # unset or empty: memory://
    assert consumer.returncode == 0, consumer.stderr
    assert "handled 5 events, dead-lettered 1" in consumer.stdout
    assert "dead letter from shop.orders: RuntimeError: no fragile goods today" in consumer.stdout


@pytest.mark.nats
def test_demo_on_a_local_nats_server_it_starts_itself() -> None:
    proc = run("-m", "trio_eventbus", "demo", "--backend", "nats", "--orders", "30", "--events", "4")
    assert proc.returncode == 0, proc.stderr
    assert "starting a local nats broker" in proc.stderr
    assert "order violations 0" in proc.stdout
    assert "published        120 envelopes (120 ok results, 0 failed)" in proc.stdout
