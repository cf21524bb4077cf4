"""metarl: gradient-based meta-RL with recurrent and state-space policies.

The research API (torch only, no Ray)::

    from metarl import StateSpaceModel, MetaMAML, Adapter, AdaptationConfig

Names are resolved lazily (PEP 562) so that `import metarl` stays cheap for the CLI and for Ray workers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "StateSpaceModel": "metarl.models",
    "MetaMAML": "metarl.maml",
    "AdaptationConfig": "metarl.adaptation",
    "Adapter": "metarl.adaptation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metarl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
