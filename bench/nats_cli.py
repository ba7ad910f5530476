"""The server's own benchmark, ``nats bench`` (natscli), on the same server as the bus's legs.

Used by ``python -m bench --backend nats`` (``bench/nats.py``) for the saturated end-to-end leg: a ``nats bench
js fetch`` consumer (a durable pull consumer, ``Fetch(500)`` batches, one explicit ack per message) runs while
``nats bench js pub async`` (JetStream asynchronous publish, 500 PubAcks awaited per batch) publishes the same
number of 256-byte messages, each with one ``X-Message-Key`` header, into a file-storage stream created for the
run. The end-to-end figure is the consumer's own (``nats bench`` times a consumer from its first message to its
last); the wall time from starting the publisher to the consumer's exit is reported beside it. Then each side
alone (publish into an empty stream; fetch the stored messages) for comparison with earlier figures.

The CLI is built once with ``python tools/provision.py --natscli`` (``NATSCLI_VERSION``, cached under
``~/.cache/trio_eventbus/natscli-<version>/bin``; ``$TEB_NATSCLI`` names a binary of your own). Keep the version
and the cache layout in sync with ``tools/provision.py``. Synchronous: call it through ``trio.to_thread``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["NATSCLI_VERSION", "locate_natscli", "nats_bench"]

NATSCLI_VERSION = "0.5.0"
_HOME_NAME = f"natscli-{NATSCLI_VERSION}"
_MARKER = ".provisioned"
_READY = "Starting JetStream durable consumer"  # logged once the durable consumer exists
_TIMEOUT = 120.0


def locate_natscli() -> str | None:
    """The ``nats`` CLI: ``$TEB_NATSCLI``, else the build of ``tools/provision.py --natscli``; None if absent."""
    env = os.environ.get("TEB_NATSCLI")
    if env:
        return env if os.access(env, os.X_OK) else None
    home_env = os.environ.get("TEB_NATSCLI_HOME")
    home = (
        Path(home_env).expanduser() if home_env else Path.home() / ".cache/trio_eventbus" / f"natscli-{NATSCLI_VERSION}"
    )
    binary = home / "bin" / "nats"
    try:
        ready = (home / _MARKER).read_text().strip() == NATSCLI_VERSION
    except OSError:
        ready = False
    return str(binary) if ready and os.access(binary, os.X_OK) else None


def nats_bench(cli: str, url: str, count: int, *, body: int = 256, alone: bool = True) -> dict[str, float]:
    """``nats bench`` end to end (publisher and fetch consumer at once), then (``alone``) publish alone and fetch
    alone."""
    base = [cli, "--server", url, "--no-context"]
    common = ["--msgs", str(count), "--size", f"{body}B", "--no-progress"]
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="teb-natsbench-") as tmp:
        for run in ("e2e", "alone") if alone else ("e2e",):
            stream, subject = f"teb-natsbench-{run}-{tag}", f"teb.natsbench.{run}.{tag}"
            _run([*base, "stream", "add", stream, "--subjects", subject, "--storage", "file", "--defaults"])
            try:
                pub = [*base, "bench", "js", "pub", "async", subject, "--stream", stream, *common]
                pub += ["--header", "X-Message-Key:k1", "--csv", f"{tmp}/{run}-pub.csv"]
                fetch = [*base, "bench", "js", "fetch", "--stream", stream, *common, "--csv", f"{tmp}/{run}-fetch.csv"]
                if run == "e2e":
                    wall = _concurrently(fetch, pub)
                    out["natsbench_e2e_msgs_per_s"] = _rate(f"{tmp}/e2e-fetch.csv")
                    out["natsbench_e2e_wall_msgs_per_s"] = count / wall
                    out["natsbench_e2e_pub_msgs_per_s"] = _rate(f"{tmp}/e2e-pub.csv")
                else:
                    _run(pub)
                    _run(fetch)
                    out["natsbench_pub_msgs_per_s"] = _rate(f"{tmp}/alone-pub.csv")
                    out["natsbench_fetch_msgs_per_s"] = _rate(f"{tmp}/alone-fetch.csv")
            finally:
                _run([*base, "stream", "rm", stream, "--force"])
    return out


def _concurrently(consumer: list[str], publisher: list[str]) -> float:
    """Start the consumer, wait until its durable consumer exists, run the publisher; seconds from the
    publisher's start to the consumer's exit."""
    with subprocess.Popen(consumer, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            log = []
            for line in proc.stderr:  # the consumer exists before this line is logged
                log.append(line)
                if _READY in line:
                    break
            else:
                raise RuntimeError(f"nats bench js fetch did not start: {''.join(log)[-2000:]}")
            start = time.perf_counter()
            _run(publisher)
            for line in proc.stderr:  # drain (the consumer logs its results at the end)
                log.append(line)
            status = proc.wait(_TIMEOUT)
            elapsed = time.perf_counter() - start
            if status != 0:
                raise RuntimeError(f"nats bench js fetch failed ({status}): {''.join(log)[-2000:]}")
            return elapsed
        finally:
            if proc.poll() is None:
                proc.kill()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:6])} failed ({result.returncode}): {result.stderr[-2000:]}")


def _rate(path: str) -> float:
    """MsgsPerSec of the one client in a ``nats bench --csv`` file."""
    with open(path, newline="") as f:
        header, first = [row for row in csv.reader(f) if row][:2]  # "#RunID,ClientID,...", then the client's row
    return float(first[header.index("MsgsPerSec")])
