"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks"): a diagonal complex SSM.

    h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t)          h ∈ C^N, λ ∈ C^N, B ∈ C^{N×H}
    y_t = Re(C h_t) + D ⊙ x_t                 C ∈ C^{H×N}, D ∈ R^H
    λ = r_max · exp(-exp(ν_log) + i·exp(θ_log)),   |λ| = r_max·exp(-exp(ν_log)) < r_max = 0.9999
    γ = exp(γ_log), initialised to sqrt(1 - |λ|²) (keeps the state's scale at init)

All parameters are real (``B_re``, ``B_im``, ``C_re``, ``C_im``, ...); the complex product is written out in real
arithmetic, so ``functional_call`` and second-order gradients work as for any real module. |λ| is stable by
construction for any ν_log (λ can only shrink towards 0; it can never reach 1). λ starts uniform on the ring
r_min ≤ |λ| ≤ r_max_init with phases θ ~ U(0, max_phase).

Two modes that agree (float64, to rounding):

- step (acting, O(1) memory): the recurrence above, one t at a time (λ and the folded weights are cached while
  gradients are off and the parameters are unchanged);
- parallel (training): a chunked scan. The T steps are cut into C chunks of L = ``chunk_size``; every chunk is
  first scanned from a zero state, all chunks at once (``h_a = λ h_{a-1} + u_a`` for a = 1..L-1 on (B, C, N)
  slices); the chunk-end states are then carried, ``s_c = λ^L s_{c-1} + h^{loc}_{c,L-1}`` (C steps on (B, N)),
  and added back as ``λ^{a+1} s_{c-1}``: sequential depth L + C instead of T, every step a whole-batch op.
  Only non-negative powers appear (λ^k = exp(k·log λ), |λ^k| ≤ 1), so nothing overflows for any length.
  (A Toeplitz-matmul form of step 1, ``h_a = Σ_{j≤a} λ^{a-j} u_j``, was 1.4x slower on CPU.)

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

R_MAX = 0.9999  # |λ| < R_MAX for every value of ν_log


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

    def _powers(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Re λ^k, Im λ^k), each (len(k), N), for integer powers k ≥ 0 (computed as exp(k log λ))."""
        log_mod, phase = self.log_lambda()
        mod = torch.exp(k[:, None] * log_mod)  # ≤ 1
        return mod * torch.cos(k[:, None] * phase), mod * torch.sin(k[:, None] * phase)

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
        """Parallel mode: x (B, T, H), h (B, 2N) -> y (B, T, H), h_T (B, 2N).

        Internally complex (``torch.complex`` views of real tensors; every parameter stays real): the input
        weight interleaves (Re, Im) rows so that ``view_as_complex`` is free.
        """
        Bsz, T, _ = x.shape
        n = self.state_dim
        L = min(self.chunk_size, T)
        C = -(-T // L)
        gamma = torch.exp(self.gamma_log)[:, None, None]
        w_in = (torch.stack([self.B_re, self.B_im], dim=1) * gamma).reshape(2 * n, -1)  # (2N, H): Re, Im pairs
        u = F.linear(x, w_in)  # (B, T, 2N)
        if C * L != T:
            u = F.pad(u, (0, 0, 0, C * L - T))  # zero inputs after the end do not change earlier states
        u = torch.view_as_complex(u.view(Bsz, C, L, n, 2))  # (B, C, L, N) complex: γ B x_t
        k = torch.arange(L + 1, device=x.device, dtype=x.dtype)
        pr, pi = self._powers(k)
        pw = torch.complex(pr, pi)  # (L+1, N): λ^0 .. λ^L
        # 1) every chunk from a zero state, all chunks at once: h_a = λ h_{a-1} + u_a
        us = u.unbind(dim=2)  # not u[:, :, i]: each slice's backward would fill a full-size zero tensor
        hs = [us[0]]
        for u_i in us[1:]:
            hs.append(torch.addcmul(u_i, hs[-1], pw[1]))
        h_loc = torch.stack(hs, dim=2)  # (B, C, L, N)
        # 2) carry the chunk-end states: s_c = λ^L s_{c-1} + h_loc[c, L-1], from s_{-1} = h
        starts = [torch.complex(h[:, :n], h[:, n:])]
        for end in h_loc[:, :, L - 1].unbind(dim=1)[:-1]:
            starts.append(torch.addcmul(end, starts[-1], pw[L]))
        s = torch.stack(starts, dim=1)[:, :, None]  # (B, C, 1, N): the state before each chunk
        # 3) add the carried state back: h_{c,a} = h_loc[c, a] + λ^{a+1} s_{c-1}
        hs = torch.addcmul(h_loc, s, pw[1:]).view(Bsz, C * L, n)[:, :T]  # (B, T, N)
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
