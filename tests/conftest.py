"""Shared test configuration: broker fixtures and the backend cases of the conformance suite."""

from __future__ import annotations

pytest_plugins = ["trio_eventbus.testing.fixtures"]
