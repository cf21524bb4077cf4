"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks"): a diagonal complex SSM.

    h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t)          h ∈ C^N, λ ∈ C^N, B ∈ C^{N×H}
    y_t = Re(C h_t) + D ⊙ x_t                 C ∈ C^{H×N}, D ∈ R^H
    λ = r_max · exp(-exp(ν_log) + i·exp(θ_log)),   |λ| = r_max·exp(-exp(ν_log)) < r_max = 0.9999
    γ = exp(γ_log), initialised to sqrt(1 - |λ|²) (keeps the state's scale at init)

All parameters are real (``B_re``, ``B_im``, ``C_re``, ``C_im``, ...): the step mode writes the complex product out
in real arithmetic, the parallel mode computes on complex views of real tensors, so ``functional_call`` and
second-order gradients work as for any real module. |λ| is stable by
construction for any ν_log (λ can only shrink towards 0; it can never reach 1). λ starts uniform on the ring
r_min ≤ |λ| ≤ r_max_init with phases θ ~ U(0, max_phase).

Two modes that agree (float64, to rounding):

- step (acting, O(1) memory): the recurrence above, one t at a time (λ and the folded weights are cached while
  gradients are off and the parameters are unchanged);
- parallel (training): a chunked scan. The T steps are cut into C chunks of L = ``chunk_size``; every chunk is
  first scanned from a zero state, all chunks at once (``h_a = λ h_{a-1} + u_a`` for a = 1..L-1 on (B, C, N)
  slices); the chunk-end states are then carried, ``s_c = λ^L s_{c-1} + h^{loc}_{c,L-1}`` (C steps on (B, N)),
  and added back as ``λ^{a+1} s_{c-1}``: sequential depth L + C instead of T, every step a whole-batch op.
  Only non-negative powers appear (|λ^k| ≤ 1), so nothing overflows for any length.
  (A Toeplitz-matmul form of step 1, ``h_a = Σ_{j≤a} λ^{a-j} u_j``, was 1.4x slower on CPU.)
  The scan is ONE autograd node (``lru_scan``) whose backward is the same scan run backwards in time with conj(λ)
  (below), itself that node again: differentiable to any order (second-order MAML) at O(1) autograd nodes per
  pass, and task-batched under ``torch.vmap`` (the batched meta-gradient) by a vmap rule that runs it on plain
  tensors with a leading task axis. ``_scan_autograd`` is the same chunked scan through autograd op by op (what
  the layer ran before; the tests' reference).

A block (``LRUBlock``) is ``x + GLU(GELU(LRU(LayerNorm(x))))``. The backbone is an input projection, blocks, and an
output projection. State: a tensor (B, num_blocks, 2N): real parts then imaginary parts of each block's h.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metarl.models.base import Backbone, check_positive_int
from metarl.models.registry import register
from metarl.models.time_loop import time_loop_function

R_MAX = 0.9999  # |λ| < R_MAX for every value of ν_log


# --- the linear recurrence as one autograd node (the meta-gradient's path) ----------------------------------------
# For hs_t = λ hs_{t-1} + u_t (t = 0..T-1, hs_{-1} = h0) and G_t the total gradient at hs_t (torch's convention for
# complex tensors, ∂L/∂Re + i ∂L/∂Im), with g_t = dL/dhs_t the gradient arriving from outside:
#     G_t = g_t + conj(λ) G_{t+1}   (the same scan, backwards in time, from G_T = 0)
#     du_t = G_t,   dh0 = conj(λ) G_0,   dλ = Σ_{b,t} G_t conj(hs_{t-1})
# ``reverse`` runs hs_t = λ hs_{t+1} + u_t from t = T-1 down to 0 (hs_T = h0): what the backward needs, and its backward is a
# forward scan again.


def _scan_forward(lam, u, h0, chunk: int, reverse: bool):
    """hs (n, B, T, N) for n stacked recurrences, without autograd: lam (n, N), u (n, B, T, N), h0 (n, B, N), all
    complex; the chunked scan of the module docstring in place on one zero-padded copy of u (zero inputs beyond
    the end change no state before it). ``reverse``: padded at the front, every loop run the other way."""
    n, B, T, N = u.shape
    L = min(chunk, T)
    C = -(-T // L)
    pad = C * L - T
    buf = u.new_zeros(n, B, C * L, N)
    hs = buf[:, :, pad:] if reverse else buf[:, :, :T]
    hs.copy_(u)
    h = buf.view(n, B, C, L, N)
    lam_b = lam[:, None, None]  # (n, 1, 1, N)
    step = -1 if reverse else 1
    for a in range(L - 2, -1, -1) if reverse else range(1, L):  # 1) every chunk from a zero state
        h[:, :, :, a].addcmul_(h[:, :, :, a - step], lam_b)
    pw = torch.cumprod(lam_b.expand(n, 1, L, N), 2)  # (n, 1, L, N): λ^1 .. λ^L
    if reverse:
        pw = pw.flip(2)  # position a is L - a steps from the chunk's far end
    ends = h[:, :, :, 0 if reverse else L - 1]  # (n, B, C, N): each chunk's last state from zero
    starts = [h0]
    for c in range(C - 1, 0, -1) if reverse else range(C - 1):  # 2) the state entering each chunk
        starts.append(torch.addcmul(ends[:, :, c], starts[-1], pw[:, :, 0 if reverse else L - 1]))
    carried = torch.stack(starts[::-1] if reverse else starts, 2)  # (n, B, C, N)
    h.addcmul_(pw[:, :, None], carried[:, :, :, None])  # 3) h_{c,a} += λ^{a+1} s_{c-1} (forward)
    return hs


def _scan_backward(scan, lam, h0, hs, dhs, chunk: int, reverse: bool):
    """(dλ, du, dh0) of ``scan`` (the Function itself, so that this is differentiable again); any leading axes."""
    g = scan(lam.conj(), dhs, torch.zeros_like(h0), chunk, not reverse)  # G_t, shaped as hs
    h0_t = h0.unsqueeze(-2)  # (..., B, 1, N)
    if reverse:
        h_prev, g_first = torch.cat([hs[..., 1:, :], h0_t], -2), g[..., -1, :]
    else:
        h_prev, g_first = torch.cat([h0_t, hs[..., :-1, :]], -2), g[..., 0, :]
    dlam = (g * h_prev.conj()).sum((-3, -2))
    return dlam, g, g_first * lam.conj().unsqueeze(-2)


_Scan = time_loop_function("_Scan", _scan_forward,
                           lambda apply, saved, grads, static: _scan_backward(apply, *saved, *grads, *static),
                           num_tensors=3, saved=lambda inputs, outputs: (inputs[0], inputs[2], *outputs))


def lru_scan(lam: torch.Tensor, u: torch.Tensor, h0: torch.Tensor, *, chunk_size: int = 32) -> torch.Tensor:
    """hs_t = λ ⊙ hs_{t-1} + u_t from hs_{-1} = h0: lam (N,), u (B, T, N), h0 (B, N), complex -> hs (B, T, N);
    one autograd node, differentiable to any order, batched under torch.vmap (see the comment above)."""
    return _Scan.apply(lam, u, h0, chunk_size, False)


def _scan_autograd(lam: torch.Tensor, u: torch.Tensor, h0: torch.Tensor, *, chunk_size: int = 32) -> torch.Tensor:
    """``lru_scan`` through autograd op by op (the layer's previous path; the tests' reference), same shapes."""
    Bsz, T, n = u.shape
    L = min(chunk_size, T)
    C = -(-T // L)
    if C * L != T:
        u = torch.cat([u, u.new_zeros(Bsz, C * L - T, n)], dim=1)
    u = u.view(Bsz, C, L, n)
    pw = torch.cumprod(lam.expand(L, n), 0)  # (L, N): λ^1 .. λ^L
    us = u.unbind(dim=2)  # not u[:, :, i]: each slice's backward would fill a full-size zero tensor
    hs = [us[0]]
    for u_i in us[1:]:
        hs.append(torch.addcmul(u_i, hs[-1], pw[0]))
    h_loc = torch.stack(hs, dim=2)  # (B, C, L, N)
    starts = [h0]
    for end in h_loc[:, :, L - 1].unbind(dim=1)[:-1]:
        starts.append(torch.addcmul(end, starts[-1], pw[L - 1]))
    s = torch.stack(starts, dim=1)[:, :, None]  # (B, C, 1, N)
    return torch.addcmul(h_loc, s, pw).view(Bsz, C * L, n)[:, :T]


class LRULayer(nn.Module):
    """One LRU recurrence, width H -> H, with N complex state dims; see the module docstring."""

    def __init__(self, width: int, state_dim: int = 64, *, r_min: float = 0.9, r_max: float = 0.999,
                 max_phase: float = 2 * math.pi, chunk_size: int = 32):
        super().__init__()
        check_positive_int("width", width)
        self.state_dim = check_positive_int("state_dim", state_dim)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        if not 0.0 <= r_min < r_max < R_MAX:
            raise ValueError(f"need 0 <= r_min < r_max < {R_MAX}, got r_min={r_min}, r_max={r_max}")
        if not 0.0 < max_phase <= 2 * math.pi:
            raise ValueError(f"`max_phase` must be in (0, 2π], got {max_phase}")
        n, h = state_dim, width
        radius = torch.sqrt(torch.rand(n) * (r_max**2 - r_min**2) + r_min**2)  # uniform on the ring (by area)
        self.nu_log = nn.Parameter(torch.log(torch.log(R_MAX / radius)))  # |λ| = R_MAX·exp(-exp(ν_log))
        self.theta_log = nn.Parameter(torch.log(max_phase * torch.rand(n).clamp_min(1e-4)))  # arg λ = exp(θ_log)
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - radius**2)))  # γ = sqrt(1 - |λ|²)
        for p in (self.nu_log, self.theta_log, self.gamma_log):
            p._optim = {"weight_decay": 0.0, "lr_scale": 0.5}  # optimizer hint, as in the LRU paper
        self.B_re = nn.Parameter(torch.randn(n, h) / math.sqrt(2 * h))
        self.B_im = nn.Parameter(torch.randn(n, h) / math.sqrt(2 * h))
        self.C_re = nn.Parameter(torch.randn(h, n) / math.sqrt(n))
        self.C_im = nn.Parameter(torch.randn(h, n) / math.sqrt(n))
        self.D = nn.Parameter(torch.randn(h))

    def log_lambda(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log|λ|, arg λ), each (N,): log|λ| = log R_MAX - exp(ν_log) < log R_MAX."""
        return math.log(R_MAX) - torch.exp(self.nu_log), torch.exp(self.theta_log)

    def lambda_re_im(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Re λ, Im λ), each (N,)."""
        log_mod, phase = self.log_lambda()
        mod = torch.exp(log_mod)
        return mod * torch.cos(phase), mod * torch.sin(phase)

    def _in_weight(self) -> torch.Tensor:
        gamma = torch.exp(self.gamma_log)[:, None]
        return torch.cat([self.B_re * gamma, self.B_im * gamma])  # (2N, H): x -> [Re γBx | Im γBx]

    def _out_weight(self) -> torch.Tensor:
        return torch.cat([self.C_re, -self.C_im], dim=1)  # (H, 2N): [h_re | h_im] -> Re(C h)

    def _step_weights(self) -> tuple[torch.Tensor, ...]:
        """(a, b, W_in, W_out) for ``step``; cached while gradients are off (acting) and the parameters unchanged.

        The cache key holds the parameter tensors themselves with their version counters and storage pointers,
        so in-place updates (optimizer steps, ``load_state_dict``), ``.data`` swaps, ``.to()`` and
        ``functional_call`` with other tensors all recompute.
        """
        params = (self.nu_log, self.theta_log, self.gamma_log, self.B_re, self.B_im, self.C_re, self.C_im)
        cacheable = not torch.is_grad_enabled() and not any(p.is_inference() for p in params)
        if cacheable:
            key = tuple((p._version, p.data_ptr()) for p in params)
            cached = self.__dict__.get("_step_cache")
            if cached is not None and cached[0] == key and all(p is q for p, q in zip(params, cached[1])):
                return cached[2]
        lr, li = self.lambda_re_im()
        weights = (torch.cat([lr, lr]), torch.cat([-li, li]), self._in_weight(), self._out_weight())
        if cacheable:
            self.__dict__["_step_cache"] = (key, params, weights)
        return weights

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, H), h (B, 2N) -> y (B, H), h' (B, 2N)."""
        a, b, w_in, w_out = self._step_weights()
        h = torch.addcmul(torch.addcmul(F.linear(x, w_in), h, a), h.roll(self.state_dim, dims=-1), b)  # λh + γBx
        return torch.addcmul(F.linear(h, w_out), self.D, x), h  # Re(C h) + D x

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parallel mode: x (B, T, H), h (B, 2N) -> y (B, T, H), h_T (B, 2N) through ``lru_scan``."""
        return self._parallel(x, h, lru_scan)

    def _parallel(self, x: torch.Tensor, h: torch.Tensor, scan) -> tuple[torch.Tensor, torch.Tensor]:
        """Parallel mode with ``scan`` (``lru_scan`` or its reference ``_scan_autograd``).

        Internally complex (``torch.complex`` views of real tensors; every parameter stays real): the input
        weight interleaves (Re, Im) rows so that ``view_as_complex`` is free.
        """
        Bsz, T, _ = x.shape
        n = self.state_dim
        gamma = torch.exp(self.gamma_log)[:, None, None]
        w_in = (torch.stack([self.B_re, self.B_im], dim=1) * gamma).reshape(2 * n, -1)  # (2N, H): Re, Im pairs
        u = torch.view_as_complex(F.linear(x, w_in).view(Bsz, T, n, 2))  # (B, T, N) complex: γ B x_t
        hs = scan(torch.complex(*self.lambda_re_im()), u, torch.complex(h[:, :n], h[:, n:]),
                  chunk_size=self.chunk_size)  # (B, T, N)
        w_out = torch.stack([self.C_re, -self.C_im], dim=2).reshape(-1, 2 * n)  # (H, 2N): Re(C h) on pairs
        y = torch.addcmul(F.linear(torch.view_as_real(hs).reshape(Bsz, T, 2 * n), w_out), self.D, x)
        return y, torch.cat([hs[:, -1].real, hs[:, -1].imag], dim=-1)


class LRUBlock(nn.Module):
    """``x + GLU(GELU(LRU(LayerNorm(x))))`` with GLU(z) = (W_a z + b_a) ⊙ σ(W_b z + b_b)."""

    def __init__(self, width: int, state_dim: int, **lru_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lru = LRULayer(width, state_dim, **lru_kwargs)
        self.glu = nn.Linear(width, 2 * width)

    def _mix(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x + F.glu(self.glu(F.gelu(z)), dim=-1)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, h = self.lru.step(self.norm(x), h)
        return self._mix(x, z), h

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, h = self.lru(self.norm(x), h)
        return self._mix(x, z), h


class LRUBackbone(Backbone):
    """Input projection -> ``num_blocks`` LRU blocks -> output projection; state (B, num_blocks, 2·state_dim)."""

    def __init__(self, *, input_dim: int, output_dim: int, width: int = 128, state_dim: int = 64,
                 num_blocks: int = 1, **lru_kwargs):
        super().__init__(input_dim=input_dim, output_dim=output_dim)
        self.width = check_positive_int("width", width)
        self.state_dim = check_positive_int("state_dim", state_dim)
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.embed = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(LRUBlock(width, state_dim, **lru_kwargs) for _ in range(num_blocks))
        self.head = nn.Linear(width, output_dim)

    def state_shapes(self, batch_size: int) -> tuple[int, int, int]:
        return (batch_size, self.num_blocks, 2 * self.state_dim)

    def _step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)  # (B, W)
        new = []
        for i, block in enumerate(self.blocks):
            z, h = block.step(z, state[:, i])
            new.append(h)
        return self.head(z), torch.stack(new, dim=1)

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)  # (B, T, W)
        new = []
        for i, block in enumerate(self.blocks):
            z, h = block(z, state[:, i])
            new.append(h)
        return self.head(z), torch.stack(new, dim=1)


@register("lru")
def _build_lru(*, input_dim: int, output_dim: int, width: int, **kwargs) -> LRUBackbone:
    """``lru``: options ``state_dim`` (N = 64 complex dims), ``num_blocks`` (1), ``r_min`` (0.9), ``r_max`` (0.999),
    ``max_phase`` (2π), ``chunk_size`` (parallel-scan chunk length, 32)."""
    return LRUBackbone(input_dim=input_dim, output_dim=output_dim, width=width, **kwargs)
