"""User-facing commands: ``python -m trio_eventbus demo`` (see :mod:`trio_eventbus.cli.main`)."""

from .main import main, make_config

__all__ = ["main", "make_config"]
