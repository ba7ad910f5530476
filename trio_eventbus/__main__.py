"""``python -m trio_eventbus``: see :mod:`trio_eventbus._cli`."""

from ._cli import main

raise SystemExit(main())
