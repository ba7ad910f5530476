#!/usr/bin/env python3
"""Provision the local brokers that trio_eventbus' tests, demo and benchmarks run against.

Idempotent and stdlib-only (Python >= 3.11); nox runs it before the test session, so when everything is
already in place it only reads two marker files and returns in milliseconds.

* NATS: makes sure nats-server ``NATS_SERVER_VERSION`` is built in the cache directory (``$TEB_NATS_HOME``,
  default ``~/.cache/trio_eventbus/nats-server-<version>``, binary in ``bin/``), building it when missing with
  ``go install github.com/nats-io/nats-server/v2@v<version>`` (about a minute; needs Go >= 1.26 on PATH or in
  /usr/local/go/bin). A marker file holding the version is written only after a successful build, so an
  interrupted build is redone. Skipped when ``TEB_NATS_URL`` or ``TEB_NATS_SERVER`` (a binary of your own) is set.
* Kafka: makes sure the Kafka broker's runtime jars are in the cache directory
  (``$TEB_KAFKA_HOME``, default ``~/.cache/trio_eventbus/kafka-<version>``, jars in ``libs/``), fetching them
  with Maven from ``tools/kafka/pom.xml`` when missing. A marker file holding the pom's hash is written only
  after a complete copy, so an interrupted download (or a changed pom) is redone. Needs ``java`` and ``mvn``.
  Skipped when ``TEB_KAFKA_BOOTSTRAP`` is set.
* ``--natscli`` (optional, only for ``python -m bench --backend nats``, never needed by the tests): makes sure
  the ``nats`` CLI ``NATSCLI_VERSION`` is built in ``$TEB_NATSCLI_HOME`` (default
  ``~/.cache/trio_eventbus/natscli-<version>``, binary in ``bin/``) with ``go install
  github.com/nats-io/natscli/nats@v<version>`` (a minute or two), marked like nats-server. The bench runs its
  ``nats bench`` beside the bus on the same server; skipped when ``TEB_NATSCLI`` (a binary of your own) is set.

Exit status: 0 when everything needed is present, 1 otherwise (with a message saying what to install).

Keep KAFKA_VERSION / NATS_SERVER_VERSION / NATSCLI_VERSION, the cache layouts and the marker name in sync with
``trio_eventbus/testing/_kafka_server.py``, ``trio_eventbus/testing/servers.py`` and ``bench/nats_cli.py``
(this script cannot import the package: it must run before the venv exists).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KAFKA_VERSION = "3.9.2"
NATS_SERVER_VERSION = "2.15.2"
NATS_MODULE = "github.com/nats-io/nats-server/v2"
NATSCLI_VERSION = "0.5.0"
NATSCLI_MODULE = "github.com/nats-io/natscli/nats"
MARKER_NAME = ".provisioned"
HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"

GO_INSTALL_HINT = "install Go >= 1.26 (https://go.dev/doc/install: unpack it into /usr/local/go)"
JAVA_INSTALL_HINT = "apt-get install -y openjdk-17-jre-headless"
MVN_INSTALL_HINT = "apt-get install -y maven"


class ProvisionError(Exception):
    """Something needed is missing and could not be installed; the message says what to do."""


def say(message: str) -> None:
    print(f"provision: {message}", flush=True)


def cache_dir(env_var: str, leaf: str) -> Path:
    """``$env_var`` when set, else ``~/.cache/trio_eventbus/<leaf>``."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trio_eventbus" / leaf


def kafka_home() -> Path:
    return cache_dir("TEB_KAFKA_HOME", f"kafka-{KAFKA_VERSION}")


def pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- NATS


def nats_home() -> Path:
    return cache_dir("TEB_NATS_HOME", f"nats-server-{NATS_SERVER_VERSION}")


def nats_server_ready(home: Path) -> bool:
    return _go_tool_ready(home, "nats-server", NATS_SERVER_VERSION)


def _go_tool_ready(home: Path, binary: str, version: str) -> bool:
    marker = home / MARKER_NAME
    try:
        return marker.read_text().strip() == version and os.access(home / "bin" / binary, os.X_OK)
    except OSError:
        return False


def find_go() -> str | None:
    """``go`` on PATH, or where the official tarball installs it (/usr/local/go/bin is not always on PATH)."""
    found = shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    return found


def ensure_nats_server() -> None:
    if os.environ.get("TEB_NATS_URL"):
        say(f"nats: TEB_NATS_URL is set ({os.environ['TEB_NATS_URL']}), not building nats-server")
        return
    if os.environ.get("TEB_NATS_SERVER"):
        say(f"nats: TEB_NATS_SERVER is set ({os.environ['TEB_NATS_SERVER']}), not building nats-server")
        return
    _ensure_go_tool(
        nats_home(),
        "nats-server",
        NATS_MODULE,
        NATS_SERVER_VERSION,
        label="nats",
        alternative="or set TEB_NATS_SERVER to a nats-server >= 2.11 binary, or TEB_NATS_URL to a running server",
    )


def _ensure_go_tool(home: Path, binary: str, module: str, version: str, *, label: str, alternative: str) -> None:
    """``binary`` ``version`` built once into ``home/bin`` with ``go install`` (locked against parallel runs)."""
    if _go_tool_ready(home, binary, version):
        say(f"{label}: {binary} {version} present in {home / 'bin'}")
        return
    go = find_go()
    if go is None:
        raise ProvisionError(
            f"go is not on PATH; it is needed once to build {binary} {version}: {GO_INSTALL_HINT}, {alternative}"
        )
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another provisioning run (a parallel nox session) builds it once
        if _go_tool_ready(home, binary, version):
            say(f"{label}: {binary} {version} built meanwhile in {home / 'bin'}")
            return
        _go_install(go, home, binary, module, version, label=label)


def _go_install(go: str, home: Path, binary: str, module: str, version: str, *, label: str) -> None:
    """Build ``module@v<version>`` into ``home/bin`` (through ``bin.partial``); the marker is written last."""
    (home / MARKER_NAME).unlink(missing_ok=True)
    partial = home / "bin.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    target = f"{module}@v{version}"
    say(f"{label}: building {binary} {version} with `go install {target}` (a minute or two)")
    started = time.monotonic()
    # GOTOOLCHAIN=local: build with the Go found here, never fetch another toolchain behind the user's back
    env = dict(os.environ, GOBIN=str(partial), GOTOOLCHAIN="local", CGO_ENABLED="0")
    result = subprocess.run(
        [go, "install", target], env=env, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    built = partial / binary
    shown = ""
    if result.returncode == 0 and os.access(built, os.X_OK):
        probe = subprocess.run([str(built), "--version"], check=False, capture_output=True, text=True)
        shown = (probe.stdout + probe.stderr).strip()
    if f"v{version}" not in shown.split():
        shutil.rmtree(partial, ignore_errors=True)
        output = result.stdout.decode("utf-8", "replace").splitlines()
        sys.stderr.write("\n".join(output[-30:]) + "\n")
        raise ProvisionError(
            f"`go install {target}` failed (status {result.returncode}, version {shown or 'none'}); "
            f"{binary} {version} needs Go >= 1.26: {GO_INSTALL_HINT}"
        )
    bin_dir = home / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    partial.rename(bin_dir)
    (home / MARKER_NAME).write_text(version + "\n")
    say(f"{label}: built {bin_dir / binary} ({shown}, {time.monotonic() - started:.1f} s)")


# ------------------------------------------------------------------------- the nats CLI (bench only)


def natscli_home() -> Path:
    return cache_dir("TEB_NATSCLI_HOME", f"natscli-{NATSCLI_VERSION}")


def ensure_natscli() -> None:
    """The ``nats`` CLI for ``nats bench`` beside the bus (optional: the tests never need it)."""
    if os.environ.get("TEB_NATSCLI"):
        say(f"natscli: TEB_NATSCLI is set ({os.environ['TEB_NATSCLI']}), not building the nats CLI")
        return
    _ensure_go_tool(
        natscli_home(), "nats", NATSCLI_MODULE, NATSCLI_VERSION, label="natscli", alternative="or set TEB_NATSCLI"
    )


# -------------------------------------------------------------------------------------------- Kafka


def kafka_libs_ready(home: Path, digest: str) -> bool:
    marker = home / MARKER_NAME
    try:
        return marker.read_text().strip() == digest and (home / "libs").is_dir()
    except OSError:
        return False


def ensure_kafka_libs() -> None:
    if os.environ.get("TEB_KAFKA_BOOTSTRAP"):
        say(f"kafka: TEB_KAFKA_BOOTSTRAP is set ({os.environ['TEB_KAFKA_BOOTSTRAP']}), not fetching Kafka")
        return
    java = shutil.which("java")
    if java is None:
        raise ProvisionError(f"java is not on PATH; the Kafka broker needs Java 17: `{JAVA_INSTALL_HINT}`")
    home = kafka_home()
    digest = pom_digest()
    if kafka_libs_ready(home, digest):
        say(f"kafka: {KAFKA_VERSION} libs present in {home / 'libs'}")
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ProvisionError(
            f"mvn is not on PATH; it is needed once to fetch Kafka {KAFKA_VERSION}: `{MVN_INSTALL_HINT}`"
        )
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER_NAME).unlink(missing_ok=True)
    partial = home / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    say(f"kafka: fetching Kafka {KAFKA_VERSION} jars with mvn into {home / 'libs'} (takes a while)")
    started = time.monotonic()
    argv = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(argv, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    jars = sorted(partial.glob("*.jar")) if partial.is_dir() else []
    if result.returncode != 0 or not any(p.name.startswith(f"kafka_2.13-{KAFKA_VERSION}") for p in jars):
        shutil.rmtree(partial, ignore_errors=True)
        output = result.stdout.decode("utf-8", "replace").splitlines()
        sys.stderr.write("\n".join(output[-30:]) + "\n")
        raise ProvisionError(
            f"mvn failed (status {result.returncode}) to fetch Kafka {KAFKA_VERSION}; "
            f"command: `{' '.join(['mvn', *argv[1:]])}`"
        )
    libs = home / "libs"
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    (home / MARKER_NAME).write_text(digest + "\n")
    say(f"kafka: {len(jars)} jars in {libs} ({time.monotonic() - started:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--no-nats", action="store_true", help="do not check/build nats-server")
    parser.add_argument("--no-kafka", action="store_true", help="do not check/fetch the Kafka libs")
    parser.add_argument(
        "--natscli",
        action="store_true",
        help=f"also build the nats CLI {NATSCLI_VERSION} (only `python -m bench --backend nats` uses it)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.no_nats:
            ensure_nats_server()
        if not args.no_kafka:
            ensure_kafka_libs()
        if args.natscli:
            ensure_natscli()
    except ProvisionError as exc:
        print(f"provision: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
