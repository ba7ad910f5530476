"""The one version source: pyproject.toml reads it (``[tool.setuptools.dynamic]``), ``trio_eventbus`` exports it."""

__version__ = "0.2.0.dev0"
