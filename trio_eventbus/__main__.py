"""``python -m trio_eventbus``: see :mod:`trio_eventbus.cli`."""

from .cli.main import main

raise SystemExit(main())
