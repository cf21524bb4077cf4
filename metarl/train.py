"""``python -m metarl.train``: the ``ray job submit`` entry point (application layer; see ``metarl.apps.train``)."""

import sys

from metarl.apps.train import add_arguments, main

__all__ = ["add_arguments", "main"]

if __name__ == "__main__":
    from metarl.apps.train import entry

    sys.exit(entry())
