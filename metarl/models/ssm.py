"""The original research model: a nonlinear state-space model with an MLP state transition.

    h_t = f(h_{t-1}) + W_in x_t + b_in        f = Linear(state_dim, hidden_dim) - ReLU - Linear(hidden_dim, state_dim)
    y_t = g(h_t)     + W_skip x_t + b_skip    g = Linear(state_dim, hidden_dim) - ReLU - Linear(hidden_dim, output_dim)

The output reads the NEW state h_t (the one returned), not h_{t-1}. Sequence mode is the same per-step recurrence
as a Python loop over time (only the input terms W x_t are batched over time, which does not change the math).

Example (the original README)::

    model = StateSpaceModel(state_dim=128, input_dim=64, output_dim=32, hidden_dim=128)
    h = model.init_hidden(batch_size=4)             # zeros (4, 128)
    y, h2 = model(torch.randn(4, 64), h)            # y (4, 32), h2 (4, 128)
"""

from __future__ import annotations

import torch
from torch import nn

from metarl.models.base import Backbone, check_positive_int
from metarl.models.registry import register


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class StateSpaceModel(Backbone):
    """``h_t = f(h_{t-1}) + W_in x_t``, ``y_t = g(h_t) + W_skip x_t``; state ``(B, state_dim)``, zeros initially.

    Args:
        state_dim: size of h.
        input_dim: size of x.
        output_dim: size of y.
        hidden_dim: hidden width of the two MLPs f and g.
        device: where to put the parameters (None: leave them where the default device puts them).
    """

    def __init__(self, state_dim: int, input_dim: int, output_dim: int, hidden_dim: int = 128, device="cpu"):
        super().__init__(input_dim=input_dim, output_dim=output_dim)
        self.state_dim = check_positive_int("state_dim", state_dim)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.state_transition = _mlp(state_dim, hidden_dim, state_dim)  # f
        self.input_to_state = nn.Linear(input_dim, state_dim)  # W_in, b_in
        self.state_to_output = _mlp(state_dim, hidden_dim, output_dim)  # g
        self.input_to_output = nn.Linear(input_dim, output_dim)  # W_skip, b_skip
        if device is not None:
            self.to(device)

    def state_shapes(self, batch_size: int) -> tuple[int, int]:
        return (batch_size, self.state_dim)

    def init_hidden(self, batch_size: int, *, device=None, dtype=None) -> torch.Tensor:
        """Zeros ``(batch_size, state_dim)``."""
        return super().init_hidden(batch_size, device=device, dtype=dtype)

    def _step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.state_transition(h) + self.input_to_state(x)  # (B, S)
        y = self.state_to_output(h) + self.input_to_output(x)  # (B, O)
        return y, h

    def _sequence(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drive = self.input_to_state(x)  # (B, T, S): W_in x_t for every t at once
        hs = []
        for drive_t in drive.unbind(dim=1):  # not drive[:, t]: each slice's backward fills a full (B, T, S) zero
            h = self.state_transition(h) + drive_t  # (B, S)
            hs.append(h)
        states = torch.stack(hs, dim=1)  # (B, T, S)
        return self.state_to_output(states) + self.input_to_output(x), h


@register("ssm")
def _build_ssm(*, input_dim: int, output_dim: int, width: int, **kwargs) -> StateSpaceModel:
    """``ssm``: StateSpaceModel with state_dim = hidden_dim = width; no other options."""
    if kwargs:
        raise ValueError(f"backbone 'ssm' takes no options besides width, got {sorted(kwargs)}")
    return StateSpaceModel(state_dim=width, input_dim=input_dim, output_dim=output_dim, hidden_dim=width,
                           device=None)
