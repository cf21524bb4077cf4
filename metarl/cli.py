"""Entry shim of the ``metarl`` console script (application layer: the commands live in ``metarl.apps``)."""

from metarl.apps.cli import main

__all__ = ["main"]
