"""LSTM and GRU baselines (one layer, hidden size = width) with a linear output head ``y_t = W_out h_t + b_out``.

Two numerically equivalent paths share the SAME parameters (those of ``torch.nn.LSTM`` / ``torch.nn.GRU``):

- fused: ``nn.LSTM`` / ``nn.GRU`` (fast on CPU, where their backward is differentiable again);
- cell: the gate equations written out as plain tensor ops (below), used whenever the input is not on the CPU,
  ``use_fused`` is False, or inside ``metarl.models.plain_ops()``. cuDNN's RNN kernels cannot double-backward, so
  on CUDA second-order MAML gradients need this path; ``torch.vmap`` over tasks needs it too (the fused CPU
  kernel has no batching rule), which is why the batched meta-gradient (``metarl.meta_batch``) enters
  ``plain_ops()``. The GRU's sequence mode runs its time loop as one autograd node with a hand-written,
  differentiable backward (``gru_sequence``, below): ~2x cheaper second-order meta-gradients than autograd
  through the cell, and task-batched under vmap; the LSTM's the same way (``lstm_sequence``).

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
from metarl.models.time_loop import time_loop_function


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


# --- the GRU's time loop with a hand-written backward (the meta-gradient's path) ------------------------------------
# The sequence h_1..h_T as one autograd node. Its backward is written in plain differentiable ops, so it can be
# differentiated again (second-order MAML) and vmapped: everything that does not need the recurrence is computed
# for all steps at once (the gates from h_{t-1}, the weight gradients as one matmul over B·T rows), leaving 3 ops
# per step in the backward loop instead of autograd's per-op nodes and a weight-gradient matmul per step. Under
# torch.vmap (the batched meta-gradient) the task axis goes into batched matmuls (``_GRU.vmap``). With
# a_n = (1-z)(1-n²), a_r = a_n·(W_hn h + b_hn)·r(1-r), a_z = (h_{t-1} - n)·z(1-z) and dh_t the total gradient at h_t:
#     d(pre-activations of r, z, n)_t = dh_t ⊙ [a_r, a_z, a_n],   d(W_hh h + b_hh)_t = dh_t ⊙ [a_r, a_z, a_n ⊙ r]
#     dh_{t-1} += dh_t ⊙ z + d(W_hh h + b_hh)_t W_hh,             dW_hh = Σ_t d(W_hh h + b_hh)_tᵀ h_{t-1}


def _gru_forward(gx, h0, w_hh, b_hh):
    """h_1..h_T (n, B, T, H) for n stacked GRUs: gx (n, B, T, 3H) input gates (with b_ih), h0 (n, B, H),
    w_hh (n, 3H, H), b_hh (n, 3H); the same equations as ``GRUBackbone._cell``."""
    H = h0.shape[-1]
    w_t = w_hh.transpose(1, 2)
    gx_rz, gx_n = gx.split([2 * H, H], -1)
    # what does not depend on the carry, for all steps at once, time-major: the r, z pre-activations' input part
    # with b_hh's r, z part, and b_hn; one baddbmm per step then gives [r, z pre-activations, W_hn h + b_hn]
    bias = torch.cat([gx_rz + b_hh[:, None, None, : 2 * H], b_hh[:, None, None, 2 * H :].expand_as(gx_n)], -1)
    h, hs = h0, []
    for bias_t, gx_n_t in zip(bias.transpose(1, 2).contiguous().unbind(1), gx_n.transpose(1, 2).contiguous().unbind(1)):
        gh = torch.baddbmm(bias_t, h, w_t)  # (n, B, 3H)
        rz = gh[..., : 2 * H].sigmoid_()  # in place: a Function's forward is not recorded
        n = torch.addcmul(gx_n_t, rz[..., :H], gh[..., 2 * H :]).tanh_()
        h = torch.lerp(n, h, rz[..., H:])
        hs.append(h)
    return torch.stack(hs, 2)


def _gru_backward(gx, h0, w_hh, b_hh, hs, dhs):
    """Gradients of ``_gru_forward`` w.r.t. (gx, h0, w_hh, b_hh) given dhs (n, B, T, H); see the comment above."""
    n_, B, T, H = hs.shape
    h_prev = torch.cat([h0.unsqueeze(2), hs[:, :, :-1]], 2)  # (n, B, T, H)
    gh = torch.baddbmm(b_hh.unsqueeze(1), h_prev.reshape(n_, B * T, H), w_hh.transpose(1, 2)).view(n_, B, T, 3 * H)
    (gx_rz, gx_n), (gh_rz, gh_n) = gx.split([2 * H, H], -1), gh.split([2 * H, H], -1)  # split: one cat backward
    r, z = torch.sigmoid(gx_rz + gh_rz).chunk(2, dim=-1)
    n = torch.tanh(torch.addcmul(gx_n, r, gh_n))
    a_n = (1 - z) * (1 - n * n)
    a_gh = torch.stack([a_n * gh_n * r * (1 - r), (h_prev - n) * z * (1 - z), a_n * r], dim=3)  # (n, B, T, 3, H)
    # dh_{t-1} = dhs_{t-1} + dh_t ⊙ z_t + d(W_hh h + b_hh)_t W_hh: the carry enters step t holding dhs_{t-1}
    dhs_steps = dhs.unbind(2)
    prev = (torch.zeros_like(h0), *dhs_steps[:-1])  # dhs_{t-1}; no dhs at h0
    dh, dh_steps = dhs_steps[-1], []  # dh: the total gradient at h_t in step t, at h0 after the loop
    for a_t, z_t, prev_t in zip(a_gh.unbind(2)[::-1], z.unbind(2)[::-1], prev[::-1]):
        dh_steps.append(dh)
        dgh = (a_t * dh.unsqueeze(2)).reshape(n_, B, 3 * H)
        dh = torch.baddbmm(torch.addcmul(prev_t, dh, z_t), dgh, w_hh)
    D = stack_steps(dh_steps[::-1], 2).unsqueeze(3)  # (n, B, T, 1, H)
    dgh5 = D * a_gh  # (n, B, T, 3, H)
    dgx = torch.cat([dgh5[:, :, :, :2], D * a_n.unsqueeze(3)], 3).reshape(n_, B, T, 3 * H)
    dgh_all = dgh5.reshape(n_, B * T, 3 * H)
    dw = dgh_all.transpose(1, 2) @ h_prev.reshape(n_, B * T, H)
    return dgx, dh, dw, dgh_all.sum(1)


_GRU = time_loop_function("_GRU", _gru_forward, lambda apply, saved, grads, static: _gru_backward(*saved, *grads),
                          num_tensors=4, saved=lambda inputs, outputs: (*inputs, *outputs))


def gru_sequence(gx: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """gx (B, T, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H) -> h_1..h_T (B, T, H); differentiable to any order."""
    return _GRU.apply(gx, h0, w_hh, b_hh)


# --- the LSTM's time loop, the same way -----------------------------------------------------------------------------
# gx holds both biases. With tc = tanh(c_t), c_{t-1} the previous cell state and dh_t, dc_t the total gradients at
# h_t, c_t (dc_t includes the path through h_t = o ⊙ tc):
#     dc_t = dcs_t + dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o(1 - tc²)
#     d(gates)_t = dc_t ⊙ [g·i(1-i), c_{t-1}·f(1-f), i·(1-g²), 0] + dh_t ⊙ [0, 0, 0, tc·o(1-o)]
#     dh_{t-1} = dhs_{t-1} + d(gates)_t W_hh,   dW_hh = Σ_t d(gates)_tᵀ h_{t-1}


def _lstm_forward(gx, h0, c0, w_hh):
    """(h_1..h_T, c_1..c_T), each (n, B, T, H), for n stacked LSTMs: gx (n, B, T, 4H), h0 and c0 (n, B, H),
    w_hh (n, 4H, H); the same equations as ``LSTMBackbone._cell``."""
    H = h0.shape[-1]
    w_t = w_hh.transpose(1, 2)
    h, c, hs, cs = h0, c0, [], []
    for gx_t in gx.unbind(2):
        gates = torch.baddbmm(gx_t, h, w_t)  # (n, B, 4H)
        i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
        c = torch.addcmul(f * c, i, torch.tanh(gates[..., 2 * H : 3 * H]))
        h = o * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, 2), torch.stack(cs, 2)


def _lstm_backward(gx, h0, c0, w_hh, hs, cs, dhs, dcs):
    """Gradients of ``_lstm_forward`` w.r.t. (gx, h0, c0, w_hh) given dhs, dcs (n, B, T, H); see the comment above."""
    n_, B, T, H = hs.shape
    h_prev = torch.cat([h0.unsqueeze(2), hs[:, :, :-1]], 2)  # (n, B, T, H)
    c_prev = torch.cat([c0.unsqueeze(2), cs[:, :, :-1]], 2)
    gates = torch.baddbmm(gx.reshape(n_, B * T, 4 * H), h_prev.reshape(n_, B * T, H), w_hh.transpose(1, 2))
    i, f, g, o = torch.sigmoid(gates.view(n_, B, T, 4 * H)).chunk(4, dim=-1)
    g = torch.tanh(gates.view(n_, B, T, 4 * H)[..., 2 * H : 3 * H])
    tc = torch.tanh(cs)
    zero = torch.zeros_like(tc)
    a_c = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), zero], dim=3)  # (n, B, T, 4, H)
    a_h = torch.stack([zero, zero, zero, tc * o * (1 - o)], dim=3)
    a_tc = o * (1 - tc * tc)
    # the carries enter step t already holding dhs_t, dcs_t: baddbmm / addcmul add them (5 ops per step)
    prev = [torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :-1]], 2) for x in (dhs, dcs)]  # dhs_{t-1}, dcs_{t-1}
    dh, carry_c = dhs[:, :, -1], dcs[:, :, -1]  # dh: the total gradient at h_t in step t, at h0 after the loop
    d_steps = []
    steps = zip(*(x.unbind(2)[::-1] for x in (*prev, a_tc, a_c, a_h, f)))  # unbind: no O(T²) select backward
    for dhs_p, dcs_p, a_tc_t, a_c_t, a_h_t, f_t in steps:
        dc = torch.addcmul(carry_c, dh, a_tc_t)
        d = torch.addcmul(dc.unsqueeze(2) * a_c_t, dh.unsqueeze(2), a_h_t).reshape(n_, B, 4 * H)
        dh, carry_c = torch.baddbmm(dhs_p, d, w_hh), torch.addcmul(dcs_p, dc, f_t)
        d_steps.append(d)
    dgates = stack_steps(d_steps[::-1], 2)  # (n, B, T, 4H)
    dw = dgates.reshape(n_, B * T, 4 * H).transpose(1, 2) @ h_prev.reshape(n_, B * T, H)
    return dgates, dh, carry_c, dw


_LSTM = time_loop_function("_LSTM", _lstm_forward,
                           lambda apply, saved, grads, static: _lstm_backward(*saved, *grads),
                           num_tensors=4, saved=lambda inputs, outputs: (*inputs, *outputs))


def lstm_sequence(gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                  w_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gx (B, T, 4H) input gates with both biases, h0 and c0 (B, H), w_hh (4H, H) -> (h_1..h_T, c_1..c_T), each
    (B, T, H); differentiable to any order."""
    return _LSTM.apply(gx, h0, c0, w_hh)


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
        hs, cs = lstm_sequence(self._input_gates(x), state["h"], state["c"], self.rnn.weight_hh_l0)  # (B, T, H)
        return self.head(hs), {"h": hs[:, -1], "c": cs[:, -1]}

    def _sequence_cells(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """The cell path's sequence through autograd op by op (what ``_sequence`` ran before; the tests' reference)."""
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
        hs = gru_sequence(self._input_gates(x), h, self.rnn.weight_hh_l0, self.rnn.bias_hh_l0)  # (B, T, H)
        return self.head(hs), hs[:, -1]

    def _sequence_cells(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cell path's sequence through autograd op by op (what ``_sequence`` ran before; the tests' reference)."""
        gx = self._input_gates(x)  # (B, T, 3H)
        hs = []
        for gx_t in gx.unbind(dim=1):  # not gx[:, t]: each slice's backward fills a full (B, T, 3H) zero
            h = self._cell(gx_t, h)
            hs.append(h)
        return self.head(stack_steps(hs)), h

    def _step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused_for(x):  # the sampler's per-step path: nn.GRU's own cell kernel, without its sequence overhead
            rnn = self.rnn
            h = torch.gru_cell(x, h, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            return self.head(h), h
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
