"""A stateless feed-forward baseline: ``y_t = MLP(x_t)``; the state is always ``{}``.

    MLP = Linear(input_dim, width) - act - [Linear(width, width) - act] x (num_layers - 1) - Linear(width, output_dim)
"""

from __future__ import annotations

import torch
from torch import nn

from metarl.models.base import Backbone, check_positive_int
from metarl.models.registry import register

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLPBackbone(Backbone):
    """Memoryless baseline (it cannot infer the task from history; a lower bound for the recurrent ones)."""

    stateful = False

    def __init__(self, *, input_dim: int, output_dim: int, width: int = 128, num_layers: int = 2,
                 activation: str = "relu"):
        super().__init__(input_dim=input_dim, output_dim=output_dim)
        self.width = check_positive_int("width", width)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        dims = [input_dim] + [width] * num_layers
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def state_shapes(self, batch_size: int) -> dict:
        return {}

    def _step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self.net(x), {}  # (B, O)

    def _sequence(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self.net(x), {}  # (B, T, O)


@register("mlp")
def _build_mlp(*, input_dim: int, output_dim: int, width: int, num_layers: int = 2, activation: str = "relu"):
    """``mlp``: options ``num_layers`` (hidden layers, default 2) and ``activation`` (relu | tanh)."""
    return MLPBackbone(input_dim=input_dim, output_dim=output_dim, width=width, num_layers=num_layers,
                       activation=activation)
