"""The application layer, above the bus and the backends: the runner (:func:`serve`, :func:`run`), the
decorator registry (:class:`Subscribers`) and the URL helpers (:func:`config_from_url`,
:func:`config_from_env`). Re-exported by :mod:`trio_eventbus`."""
