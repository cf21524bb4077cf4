"""LSTM and GRU baselines (one layer, hidden size = width) with a linear output head ``y_t = W_out h_t + b_out``.

Two numerically equivalent paths share the SAME parameters (those of ``torch.nn.LSTM`` / ``torch.nn.GRU``):

- fused: ``nn.LSTM`` / ``nn.GRU`` (fast on CPU, where their backward is differentiable again);
- cell: the gate equations written out as plain tensor ops (below), used whenever the input is not on the CPU,
  ``use_fused`` is False, or inside ``metarl.models.plain_ops()``. cuDNN's RNN kernels cannot double-backward, so
  on CUDA second-order MAML gradients need this path; ``torch.func.vmap`` over tasks needs it too (the fused CPU
  kernel has no batching rule), which is why the batched meta-gradient (``metarl.meta_batch``) enters
  ``plain_ops()``.

LSTM (gate order i, f, g, o as in torch)::

    i, f, g, o = σ(.), σ(.), tanh(.), σ(.)  of  W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)

GRU (gate order r, z, n)::

    r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

States are batch-first: LSTM ``{"h": (B, H), "c": (B, H)}``, GRU a tensor ``(B, H)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarl.models.base import Backbone, check_positive_int, plain_ops_active, stack_steps
from metarl.models.registry import register


class _RNNBackbone(Backbone):
    rnn_cls: type[nn.RNNBase]

    def __init__(self, *, input_dim: int, output_dim: int, width: int = 128, use_fused: bool = True):
        super().__init__(input_dim=input_dim, output_dim=output_dim)
        self.width = check_positive_int("width", width)
        self.use_fused = bool(use_fused)
        self.rnn = self.rnn_cls(input_dim, width, batch_first=True)
        self.head = nn.Linear(width, output_dim)

    def fused_for(self, x: torch.Tensor) -> bool:
        """Whether ``x`` goes through nn.LSTM/nn.GRU (CPU, ``use_fused``, not inside `plain_ops`) or the cell path."""
        return self.use_fused and x.device.type == "cpu" and not plain_ops_active()

    def _input_gates(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rnn.weight_ih_l0, self.rnn.bias_ih_l0)  # (..., G*H), all time steps at once


class LSTMBackbone(_RNNBackbone):
    """One-layer LSTM + linear head; state ``{"h": (B, H), "c": (B, H)}``."""

    rnn_cls = nn.LSTM

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, int]]:
        return {"h": (batch_size, self.width), "c": (batch_size, self.width)}

    def _input_gates(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0  # both biases enter the gates additively
        return F.linear(x, self.rnn.weight_ih_l0, bias)  # (..., 4H), all time steps at once

    def _cell(self, gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # few ops per step: the second-order meta-gradient differentiates each one three times
        gates = torch.addmm(gx, h, self.rnn.weight_hh_l0.t())  # (B, 4H); gx holds both biases
        i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
        c = torch.addcmul(f * c, i, torch.tanh(gates[..., 2 * self.width : 3 * self.width]))
        return o * torch.tanh(c), c

    def _sequence(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self.fused_for(x):
            hs, (h, c) = self.rnn(x, (state["h"].unsqueeze(0).contiguous(), state["c"].unsqueeze(0).contiguous()))
            return self.head(hs), {"h": h.squeeze(0), "c": c.squeeze(0)}
        gx = self._input_gates(x)  # (B, T, 4H)
        h, c = state["h"], state["c"]
        hs = []
        for gx_t in gx.unbind(dim=1):  # not gx[:, t]: each slice's backward fills a full (B, T, 4H) zero
            h, c = self._cell(gx_t, h, c)
            hs.append(h)
        return self.head(stack_steps(hs)), {"h": h, "c": c}

    def _step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self.fused_for(x):
            return super()._step(x, state)
        h, c = self._cell(self._input_gates(x), state["h"], state["c"])
        return self.head(h), {"h": h, "c": c}


class GRUBackbone(_RNNBackbone):
    """One-layer GRU + linear head; state ``(B, H)``."""

    rnn_cls = nn.GRU

    def state_shapes(self, batch_size: int) -> tuple[int, int]:
        return (batch_size, self.width)

    def _cell(self, gx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # few ops per step: the second-order meta-gradient differentiates each one three times
        H = self.width
        gh = F.linear(h, self.rnn.weight_hh_l0, self.rnn.bias_hh_l0)  # (B, 3H)
        r, z = torch.sigmoid(gx[..., : 2 * H] + gh[..., : 2 * H]).chunk(2, dim=-1)
        n = torch.tanh(torch.addcmul(gx[..., 2 * H :], r, gh[..., 2 * H :]))
        return torch.lerp(n, h, z)  # = (1 - z) n + z h

    def _sequence(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused_for(x):
            hs, h = self.rnn(x, h.unsqueeze(0).contiguous())
            return self.head(hs), h.squeeze(0)
        gx = self._input_gates(x)  # (B, T, 3H)
        hs = []
        for gx_t in gx.unbind(dim=1):
            h = self._cell(gx_t, h)
            hs.append(h)
        return self.head(stack_steps(hs)), h

    def _step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused_for(x):
            return super()._step(x, h)
        h = self._cell(self._input_gates(x), h)
        return self.head(h), h


@register("lstm")
def _build_lstm(*, input_dim: int, output_dim: int, width: int, use_fused: bool = True) -> LSTMBackbone:
    """``lstm``: hidden size = width; option ``use_fused`` (False forces the explicit cell path)."""
    return LSTMBackbone(input_dim=input_dim, output_dim=output_dim, width=width, use_fused=use_fused)


@register("gru")
def _build_gru(*, input_dim: int, output_dim: int, width: int, use_fused: bool = True) -> GRUBackbone:
    """``gru``: hidden size = width; option ``use_fused`` (False forces the explicit cell path)."""
    return GRUBackbone(input_dim=input_dim, output_dim=output_dim, width=width, use_fused=use_fused)
