"""The pressure-level harness (bench/levels.py) and its report (bench/report.py), on the memory backend.

Figures are printed, never asserted on time: the tests check that the harness counts what it claims to count
(order violations among them: a deliberately out-of-order plan must show up) and that the report is written.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_eventbus as teb
from bench.levels import OrderCheck, bench_levels, run_leg
from bench.report import PLOTS, jsonable, markdown, text, write_report

ROOT = Path(__file__).resolve().parent.parent

LEG_KEYS = {
    "msgs_per_s",
    "p50_ms",
    "p99_ms",
    "order_violations",
    "duplicates",
    "lost",
    "rss_mib",
    "tasks",
    "publish_failed",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in the checkout, importing this tree's ``trio_eventbus`` and ``bench``."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=environ
    )


def tiny_figures() -> dict[str, Any]:
    """A small levels run on memory (about a second), for the report tests."""
    return trio.run(functools.partial(bench_levels, "memory", levels=(50, 100), jxt=100, rounds=1))


def test_order_check_counts_handlings_behind_their_aggregate() -> None:
    check = OrderCheck()
    for aggregate, seq in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]:
        check.observe(aggregate, seq)
    assert check.violations == 0
    for aggregate, seq in [("a", 5), ("a", 4), ("b", 3), ("b", 1), ("a", 6)]:
        check.observe(aggregate, seq)
    print(f"violations={check.violations}")
    assert check.violations == 2  # a4 after a5, b1 after b3; other aggregates do not interfere


async def test_swapped_plan_shows_up_as_order_violations() -> None:
    # each aggregate's envelopes are published as versions 2, 1, 4, 3: the bus keeps publish order per key, so
    # the handler sees 1 after 2 and 3 after 4, two violations per aggregate, through the whole envelope path
    def swapped(i: int) -> tuple[int, int]:
        return i % 10, ((i // 10) ^ 1) + 1

    with trio.fail_after(30):
        bad = await run_leg(teb.MemoryConfig(), "envelope", 40, aggregates=10, plan=swapped)
        good = await run_leg(teb.MemoryConfig(), "envelope", 40, aggregates=10)
    print(f"swapped: {bad['order_violations']} violations; in order: {good['order_violations']}")
    assert bad["order_violations"] == 20
    assert good["order_violations"] == 0
    assert bad["lost"] == good["lost"] == 0
    assert bad["duplicates"] == good["duplicates"] == 0


async def test_levels_figures_and_report(tmp_path: Path) -> None:
    with trio.fail_after(60):
        figures = await bench_levels("memory", levels=(50, 200), jxt=300, rounds=1)
    print(text(figures))
    assert set(figures["levels"]) == {"50", "200"}
    for level, row in figures["levels"].items():
        assert set(row) == {"raw", "envelope"}
        for leg, f in row.items():
            assert set(f) >= LEG_KEYS, (level, leg)
            assert f["messages"] == int(level)
            assert f["order_violations"] == f["lost"] == f["publish_failed"] == 0
            assert f["tasks"] > 0
            assert f["rss_mib"] >= f["rss_start_mib"] > 0
    (round_,) = figures["jxt"]["rounds"]
    assert set(round_) >= {"envelope", "raw", "client"}
    assert round_["envelope"]["messages"] == round_["client"]["messages"] == 300
    assert figures["jxt"]["go"] is None  # no Go figure for the memory backend
    assert {"date", "nproc", "python", "broker"} <= set(figures["machine"])
    json.dumps(jsonable(figures), allow_nan=False)  # strict JSON

    written, note = write_report([figures], tmp_path, plots=False)
    assert written == [tmp_path / "README.md"]
    assert note is None
    page = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "### envelope leg (publish_envelope → subscribe_envelope)" in page
    assert "| envelopes | envelopes/s | p50 ms | p99 ms | order violations |" in page
    assert "| 200 |" in page
    assert "| 300 (jxt workload, median of 1) |" in page
    assert "Plots need matplotlib" in page


def test_report_says_plots_need_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = tiny_figures()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `bench` extra were not installed
    written, note = write_report([figures], tmp_path)
    assert written == [tmp_path / "README.md"]
    assert note is not None
    assert "bench" in note
    assert not any((tmp_path / name).exists() for name in PLOTS)


def test_report_plots(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (the extra `bench`, which nox installs: missing it is an error, not a skip)

    figures = tiny_figures()
    written, note = write_report([figures], tmp_path)
    assert note is None
    for name in PLOTS:
        size = (tmp_path / name).stat().st_size
        print(f"{name}: {size:,} bytes")
        assert 0 < size < 150_000
        assert tmp_path / name in written
    assert "![throughput per level](throughput.png)" in markdown([figures], plots=True)


def test_levels_cli_json_and_report_from_files(tmp_path: Path) -> None:
    proc = run("-m", "bench", "--levels", "50,100", "--jxt", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    figures = json.loads(line)
    assert figures["backend"] == "memory"
    assert figures["mode"] == "levels"
    assert set(figures["levels"]) == {"50", "100"}
    assert "jxt" not in figures
    saved = tmp_path / "memory.json"
    saved.write_text(line, encoding="utf-8")
    out = tmp_path / "report"
    proc = run("-m", "bench", "--report", "--from", str(saved), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    page = (out / "README.md").read_text(encoding="utf-8")
    assert "## memory" in page
    assert "| 100 |" in page


def test_report_command_runs_the_legs(tmp_path: Path) -> None:
    proc = run(
        "-m", "bench", "--report", "--backends", "memory", "--levels", "50", "--jxt", "100", "--rounds", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "memory.json").read_text(encoding="utf-8"))  # for a later --from
    assert saved["levels"]["50"]["envelope"]["order_violations"] == 0
    assert saved["jxt"]["rounds"][0]["client"]["messages"] == 100
    page = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| 100 (jxt workload, median of 1) |" in page
    assert "pressure levels on memory" in proc.stderr  # the terminal tables
