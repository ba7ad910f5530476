"""Sessions: ``nox`` runs lint, typecheck and tests (the whole suite, with real local brokers, on 3.11-3.13).

- ``tests``: installs the package with every extra, provisions the brokers (``tools/provision.py``: builds the
  pinned nats-server release with Go once and caches it, fetches Apache Kafka's jars with Maven once; skipped
  for brokers named by ``TEB_NATS_URL`` / ``TEB_KAFKA_BOOTSTRAP``), then runs pytest on Python 3.11, 3.12 and
  3.13 (coverage reported on 3.11).
  Extra arguments go to pytest: ``nox -s tests-3.12 -- -m "not kafka"``.
- ``tests_memory``: the fast loop: every test that needs no broker (no Go, Java or Maven; under a minute).
- ``lint``: ruff check, ruff format --check, flake8-async ASYNC910/911 (checkpoints). ``typecheck``: mypy --strict.
- ``demo`` / ``bench``: ``python -m trio_eventbus demo|bench`` (extra arguments passed on).
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
PYTHONS = ["3.11", "3.12", "3.13"]


def _expose_pyenv_interpreters() -> None:
    """Put pyenv's real ``python3.X`` directories ahead of its shims, which refuse versions not made active."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [str(max(versions.glob(f"{v}.*"), default=versions / v) / "bin") for v in PYTHONS]
    found = [d for d in found if Path(d).is_dir()]
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_expose_pyenv_interpreters()
ALL_EXTRAS = ".[dev,nats,kafka,lz4,uvloop,bench]"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite against real brokers (a missing broker is an error, never a skip)."""
    session.install("-e", ALL_EXTRAS)
    session.run("python", "tools/provision.py")
    coverage = ["--cov=trio_eventbus", "--cov-report=term:skip-covered"] if session.python == PYTHON else []
    session.run("python", "-m", "pytest", *coverage, *session.posargs)


@nox.session(python=PYTHON)
def tests_memory(session: nox.Session) -> None:
    """Every test that needs no broker: the fast loop (pip packages only; no Go, Java or Maven)."""
    session.install("-e", ALL_EXTRAS)
    session.run("python", "-m", "pytest", "-m", "not nats and not kafka", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check; flake8-async's opt-in checkpoint rules (see .flake8)."""
    session.install("ruff>=0.5", "flake8", "flake8-async")
    session.run("ruff", "check", "trio_eventbus", "bench", "tests", "examples", "noxfile.py", "tools")
    session.run("ruff", "format", "--check", "trio_eventbus", "bench", "tests", "examples", "noxfile.py", "tools")
    # every public async function is a checkpoint on every path (ASYNC9xx are opt-in, not in ruff's ASYNC set)
    session.run("flake8", "--select=ASYNC910,ASYNC911", "trio_eventbus")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ALL_EXTRAS)
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The example order service (memory backend unless arguments say otherwise)."""
    session.install("-e", ".")
    session.run("python", "-m", "trio_eventbus", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: ``nox -s bench -- --backend memory --json``."""
    session.install("-e", ALL_EXTRAS)
    session.run("python", "tools/provision.py")
    session.run("python", "-m", "bench", *session.posargs)
