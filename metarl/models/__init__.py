"""Sequence backbones with one interface: ``init_hidden(B)`` / ``forward(x, state) -> (y, state)``.

    from metarl import models
    net = models.build("gru", input_dim=20, output_dim=6, width=128)     # or ssm, lstm, transformer, mlp, lru
    state = net.init_hidden(8)
    y, state = net(torch.randn(8, 20), state)                            # one step: (8, 6)
    y, state = net(torch.randn(8, 50, 20), state)                        # a sequence: (8, 50, 6)

See ``base.py`` for the contract and ``registry.py`` for ``build`` / ``build_matched``. Importing this package
registers the built-in backbones (that is its only side effect); it never imports Ray.
"""

from metarl.models.base import Backbone, State, plain_ops, plain_ops_active, stack_steps
from metarl.models.lru import LRUBackbone, LRULayer
from metarl.models.mlp import MLPBackbone
from metarl.models.registry import available, build, build_matched, num_params, register
from metarl.models.rnn import GRUBackbone, LSTMBackbone
from metarl.models.ssm import StateSpaceModel
from metarl.models.transformer import TransformerBackbone

__all__ = [
    "Backbone",
    "GRUBackbone",
    "LRUBackbone",
    "LRULayer",
    "LSTMBackbone",
    "MLPBackbone",
    "State",
    "StateSpaceModel",
    "TransformerBackbone",
    "available",
    "build",
    "build_matched",
    "num_params",
    "plain_ops",
    "plain_ops_active",
    "register",
    "stack_steps",
]
