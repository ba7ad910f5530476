#!/usr/bin/env python3
"""Provision the local brokers that trio_eventbus' tests, demo and benchmarks run against.

Idempotent and stdlib-only (Python >= 3.11); nox runs it before the test session, so when everything is
already in place it only looks at PATH and one marker file and returns in milliseconds.

* NATS: makes sure ``nats-server`` is on PATH. When it is missing and we are root on a system with apt-get,
  runs ``apt-get update`` and ``apt-get install -y nats-server``; otherwise fails with the command to run.
  Skipped when ``TEB_NATS_URL`` is set (the tests then use that server).
* Kafka: makes sure the Kafka broker's runtime jars are in the cache directory
  (``$TEB_KAFKA_HOME``, default ``~/.cache/trio_eventbus/kafka-<version>``, jars in ``libs/``), fetching them
  with Maven from ``tools/kafka/pom.xml`` when missing. A marker file holding the pom's hash is written only
  after a complete copy, so an interrupted download (or a changed pom) is redone. Needs ``java`` and ``mvn``.
  Skipped when ``TEB_KAFKA_BOOTSTRAP`` is set.

Exit status: 0 when everything needed is present, 1 otherwise (with a message saying what to install).

Keep KAFKA_VERSION, the cache layout and the marker name in sync with ``trio_eventbus/testing/_kafka_server.py``
(this script cannot import the package: it must run before the venv exists).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KAFKA_VERSION = "3.9.2"
MARKER_NAME = ".provisioned"
HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"

NATS_INSTALL_HINT = "apt-get update && apt-get install -y nats-server"
JAVA_INSTALL_HINT = "apt-get install -y openjdk-17-jre-headless"
MVN_INSTALL_HINT = "apt-get install -y maven"


class ProvisionError(Exception):
    """Something needed is missing and could not be installed; the message says what to do."""


def say(message: str) -> None:
    print(f"provision: {message}", flush=True)


def kafka_home() -> Path:
    env = os.environ.get("TEB_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trio_eventbus" / f"kafka-{KAFKA_VERSION}"


def pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- NATS


def find_nats_server() -> str | None:
    """``nats-server`` on PATH, or where Debian's package puts it (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("nats-server")
    if found is None and os.access("/usr/sbin/nats-server", os.X_OK):
        found = "/usr/sbin/nats-server"
    return found


def ensure_nats_server() -> None:
    if os.environ.get("TEB_NATS_URL"):
        say(f"nats: TEB_NATS_URL is set ({os.environ['TEB_NATS_URL']}), not checking nats-server")
        return
    found = find_nats_server()
    if found:
        say(f"nats: {found}")
        return
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        why = "apt-get not available" if apt_get is None else "not root"
        raise ProvisionError(
            f"nats-server is not on PATH ({why}). Install it with `sudo {NATS_INSTALL_HINT}` "
            "(or put a nats-server binary on PATH, or set TEB_NATS_URL to an existing server)."
        )
    say("nats: nats-server missing, installing with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in ([apt_get, "update", "-qq"], [apt_get, "install", "-y", "-qq", "nats-server"]):
        shown = " ".join(["apt-get", *argv[1:]])
        say(f"nats: running {shown}")
        result = subprocess.run(argv, env=env, check=False)
        if result.returncode != 0:
            raise ProvisionError(
                f"`{shown}` failed with status {result.returncode}; install nats-server yourself: `{NATS_INSTALL_HINT}`"
            )
    found = find_nats_server()
    if not found:
        raise ProvisionError(
            f"nats-server is still not on PATH after apt-get; install it with `{NATS_INSTALL_HINT}` "
            "or put a nats-server binary on PATH."
        )
    say(f"nats: installed {found}")


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
    parser.add_argument("--no-nats", action="store_true", help="do not check/install nats-server")
    parser.add_argument("--no-kafka", action="store_true", help="do not check/fetch the Kafka libs")
    args = parser.parse_args(argv)
    try:
        if not args.no_nats:
            ensure_nats_server()
        if not args.no_kafka:
            ensure_kafka_libs()
    except ProvisionError as exc:
        print(f"provision: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
