"""``python -m bench --backend memory|nats|kafka [--bridge thread|trio-asyncio] [--messages N] [--json]``.

``--backend nats --instances 1,2,3``: a consumer group of 1, 2 and 3 instances (``bench/nats_groups.py``)
instead of the bus-versus-nats-py legs.

``--levels [500,2000,5000,10000]``: the pressure levels instead, raw and envelope legs per level, then the Go
original's workload (``--jxt 20000`` envelopes, ``--rounds`` times beside the plain client; ``bench/levels.py``).

``--report [--backends memory,nats,kafka] [--out docs/bench] [--from FILE ...]``: the levels of every backend
(or the JSON files of earlier ``--levels --json`` runs), written as ``OUT/README.md`` with PNG plots
(``bench/report.py``; the plots need the optional extra ``bench``); each backend's figures are saved as
``OUT/<backend>.json`` for ``--from``.

Without ``--url``, ``--backend nats|kafka`` starts a throw-away local broker (as ``python -m trio_eventbus demo``).
``--json`` prints every mode's figures as one JSON object (non-finite figures as ``null``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from trio_eventbus.cli.main import add_broker_arguments, broker_url

from .report import jsonable

_LEVELS = "500,2000,5000,10000"


def _bench(args: argparse.Namespace) -> int:
    figures: dict[str, Any]
    if args.messages is None:
        args.messages = 200_000 if args.backend == "kafka" else 50_000
    if args.backend == "memory":
        from .memory import bench_memory

        figures = trio.run(lambda: bench_memory(messages=args.messages, rounds=args.rounds))
    elif args.backend == "nats":
        if args.url is None:
            raise SystemExit("--backend nats needs --url")
        if args.instances:
            from .nats_groups import bench_nats_groups

            sizes = [int(n) for n in args.instances.split(",")]
            figures = trio.run(lambda: bench_nats_groups(args.url, instances=sizes, messages=args.messages))
        else:
            from .nats import bench_nats

            figures = trio.run(lambda: bench_nats(args.url, messages=args.messages, bridge=args.bridge))
    else:
        if args.url is None:
            raise SystemExit("--backend kafka needs --url")
        from .kafka import bench_kafka

        figures = trio.run(lambda: bench_kafka(args.url, messages=args.messages, bridge=args.bridge))
    figures = {"backend": args.backend, **figures}
    if args.json:
        print(json.dumps(jsonable(figures), sort_keys=True))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            if isinstance(value, bool | str) or not isinstance(value, int | float):
                shown = str(value)
            elif isinstance(value, float) and not value.is_integer():
                shown = f"{value:,.3f}"
            else:
                shown = f"{value:,.0f}"
            print(f"{key:<{width}}  {shown}")
    return 0


def _levels(backend: str, url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """The levels figures of ``backend``, on a throw-away broker unless ``url`` names one."""
    from .levels import bench_levels

    levels = [int(n) for n in (args.levels or _LEVELS).split(",") if n.strip()]
    with broker_url(backend, url) as found:
        run = functools.partial(
            bench_levels,
            backend,
            found,
            levels=levels,
            jxt=args.jxt,
            rounds=args.rounds,
            bridge=args.bridge,
            form=args.publish,
            started=url is None and backend != "memory",
        )
        return trio.run(run)


def _levels_in_child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m bench --backend BACKEND --levels ... --json`` in a child process: each backend's RSS figures
    start from a fresh interpreter, not from the heap the backends before it left behind."""
    argv = [sys.executable, "-m", "bench", "--backend", backend, "--levels", args.levels or _LEVELS, "--json"]
    argv += ["--jxt", str(args.jxt), "--rounds", str(args.rounds), "--bridge", args.bridge, "--publish", args.publish]
    if args.url is not None and backend != "memory":
        argv += ["--url", args.url]
    child = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False, cwd=Path(__file__).parent.parent)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed with exit code {child.returncode}")
    figures: dict[str, Any] = json.loads(child.stdout)
    return figures


def _report(args: argparse.Namespace) -> int:
    from .report import text, write_report

    out = Path(args.out)
    results: list[dict[str, Any]] = []
    if args.from_files:
        results = [json.loads(Path(name).read_text(encoding="utf-8")) for name in args.from_files]
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if args.url is not None and len({b for b in backends if b != "memory"}) > 1:
            raise SystemExit("--report with --url: name one broker backend in --backends")
        out.mkdir(parents=True, exist_ok=True)
        for backend in backends:
            figures = _levels_in_child(backend, args)
            saved = out / f"{backend}.json"
            saved.write_text(json.dumps(jsonable(figures), indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(text(figures) + "\n", file=sys.stderr)
            results.append(figures)
    written, note = write_report(results, out)
    for path in written:
        print(f"wrote {path}")
    if note:
        print(note)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_broker_arguments(parser)
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="messages per leg (default 50,000; kafka 200,000: at ~50k msgs/s a shorter saturated leg "
        "lasts about a second and measures the start-up transient more than the steady state)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating rounds: of the memory legs; with --levels, of the jxt comparison",
    )
    parser.add_argument("--bridge", choices=("auto", "thread", "trio-asyncio"), default="thread")
    parser.add_argument("--json", action="store_true", help="print one machine-readable line")
    parser.add_argument(
        "--instances",
        default=None,
        help="nats: comma-separated group sizes (e.g. 1,2,3): e2e and paced figures of a group of that many "
        "instances on a 6-partition topic, after today's single-instance layout",
    )
    parser.add_argument(
        "--levels",
        nargs="?",
        const=_LEVELS,
        default=None,
        help="pressure levels (envelopes over 100 aggregates; default 500,2000,5000,10000): raw and envelope legs "
        "per level, then the jxt comparison",
    )
    parser.add_argument(
        "--jxt",
        type=int,
        default=20_000,
        help="with --levels/--report: envelopes of the Go original's workload (0: skip it)",
    )
    parser.add_argument(
        "--publish",
        choices=("nowait", "await"),
        default="nowait",
        help="with --levels/--report: the hot-loop nowait form (awaiting only when the window is full), or "
        "await every publish",
    )
    parser.add_argument("--report", action="store_true", help="write the Markdown report and plots (see above)")
    parser.add_argument("--backends", default="memory,nats,kafka", help="--report: the backends to run")
    parser.add_argument("--out", default="docs/bench", help="--report: the output directory")
    parser.add_argument(
        "--from", dest="from_files", nargs="+", metavar="FILE", help="--report: saved --json figures to render"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        return _report(args)
    if args.levels is not None:
        if args.instances:
            raise SystemExit("--levels and --instances are separate modes")
        figures = _levels(args.backend, args.url, args)
        if args.json:
            print(json.dumps(jsonable(figures), sort_keys=True))
        else:
            from .report import text

            print(text(figures))
        return 0
    with broker_url(args.backend, args.url) as url:
        args.url = url
        return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
