"""A causal sliding-window Transformer whose recurrent state is a cache of the last K-1 tokens of every layer.

Each token t attends to itself and the K-1 tokens before it (K = ``context``), with a learned relative
position bias ``b[head, d]`` on the logits (d = t - s in 0..K-1, initialised to ALiBi slopes ``-m_head·d``),
so attention depends only on distances and sequence mode equals step mode exactly::

    h^0_t = W_in x_t                          h^{l+1}_t = a_t + FFN(LN(a_t)),  a_t = h^l_t + Attn_l(LN(h^l))_t
    Attn(z)_t = Σ_{s=t-K+1..t, valid} softmax_s(q_t·k_s/√d_head + b[d=t-s]) v_s        y_t = W_out LN(h^L_t)

State (flat dict, batch-first): ``"layer{l}_k"``, ``"layer{l}_v"`` (B, K-1, width) = the attention keys and
values of the previous K-1 tokens in layer l (a KV cache; right-aligned: slot K-2 is the newest) and ``"length"``
(B,) int64 = how many slots are valid (0..K-1).
Sequence mode prepends the cached tokens to each layer's keys/values, masks invalid slots, and evaluates the
banded attention block by block (queries in blocks of S = min(K, T), each against its S+K-1 keys), so memory is
O(T·K), not O(T²). Step mode is the same code on a length-1 sequence.

Window semantics: with one layer, y_t depends only on x_{t-K+1..t}; with L layers the receptive field is
L·(K-1)+1 inputs (as in any sliding-window Transformer with a cache, e.g. Mistral), still independent of T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metarl.models.base import Backbone, check_positive_int
from metarl.models.registry import register


class _Block(nn.Module):
    """Pre-LN Transformer block with banded causal attention and a relative position bias."""

    def __init__(self, width: int, num_heads: int, context: int, ffn_mult: int):
        super().__init__()
        self.num_heads, self.context = num_heads, context
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_mult * width), nn.GELU(), nn.Linear(ffn_mult * width, width))
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)])
        self.rel_bias = nn.Parameter(-slopes[:, None] * torch.arange(context, dtype=torch.float32))  # (heads, K)

    def forward(self, h: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, key_valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, T, W) current inputs; cache_k, cache_v (B, K-1, W) keys/values of the previous K-1 tokens;
        key_valid (B, K-1+T) bool. Returns the outputs (B, T, W) and the keys/values (B, K-1+T, W)."""
        B, T, W = h.shape
        K, nh = self.context, self.num_heads
        dh = W // nh
        S = min(K, T)  # query block size
        n_blk = -(-T // S)
        pad = n_blk * S - T
        q, k, v = self.qkv(self.norm1(h)).split(W, dim=-1)  # (B, T, W) each
        k_all = k = torch.cat([cache_k, k], dim=1)  # (B, K-1+T, W): keys/values see the cache
        v_all = v = torch.cat([cache_v, v], dim=1)
        valid = key_valid
        if pad:  # padded keys are "valid" so padded query rows never see an all-masked row (no NaN)
            q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
            valid = F.pad(key_valid, (0, pad), value=True)
        q = q.view(B, n_blk, S, nh, dh).transpose(2, 3)  # (B, n, nh, S, dh)
        k = k.unfold(1, S + K - 1, S).reshape(B, n_blk, nh, dh, S + K - 1)  # (B, n, nh, dh, S+K-1)
        v = v.unfold(1, S + K - 1, S).reshape(B, n_blk, nh, dh, S + K - 1)
        valid = valid.unfold(1, S + K - 1, S)  # (B, n, S+K-1)
        # query i of a block sits at key index i+K-1; it sees keys j with distance d = i+K-1-j in [0, K-1]
        i = torch.arange(S, device=h.device)[:, None]
        j = torch.arange(S + K - 1, device=h.device)[None, :]
        dist = i + K - 1 - j  # (S, S+K-1)
        band = (dist >= 0) & (dist <= K - 1)
        bias = self.rel_bias[:, dist.clamp(0, K - 1)]  # (nh, S, S+K-1)
        logits = q @ k / math.sqrt(dh) + bias  # (B, n, nh, S, S+K-1)
        mask = band & valid[:, :, None, None, :]  # (B, n, 1, S, S+K-1)
        attn = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        out = attn @ v.transpose(-1, -2)  # (B, n, nh, S, dh)
        out = out.transpose(2, 3).reshape(B, n_blk * S, W)[:, :T]  # (B, T, W)
        a = h + self.proj(out)
        return a + self.ffn(self.norm2(a)), k_all, v_all


class TransformerBackbone(Backbone):
    """Sliding-window causal Transformer; see the module docstring for the math and the state."""

    def __init__(self, *, input_dim: int, output_dim: int, width: int = 128, num_layers: int = 2,
                 num_heads: int = 4, context: int = 32, ffn_mult: int = 4):
        super().__init__(input_dim=input_dim, output_dim=output_dim)
        self.width = check_positive_int("width", width)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.context = check_positive_int("context", context)
        check_positive_int("ffn_mult", ffn_mult)
        if width % num_heads:
            raise ValueError(f"`width` ({width}) must be a multiple of `num_heads` ({num_heads})")
        self.embed = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(_Block(width, num_heads, context, ffn_mult) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, output_dim)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        shapes = {f"layer{i}_{kv}": (batch_size, self.context - 1, self.width)
                  for i in range(self.num_layers) for kv in "kv"}
        return {**shapes, "length": (batch_size,)}

    def init_hidden(self, batch_size: int, *, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """Empty caches: zeros ``(B, K-1, width)`` per layer and ``length`` zeros (B,) int64."""
        state = super().init_hidden(batch_size, device=device, dtype=dtype)
        state["length"] = state["length"].long()
        return state

    def _sequence(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        B, T, _ = x.shape
        K = self.context
        length = state["length"]
        slot = torch.arange(K - 1, device=x.device)
        key_valid = torch.cat([slot[None, :] >= (K - 1 - length)[:, None],
                               torch.ones(B, T, dtype=torch.bool, device=x.device)], dim=1)  # (B, K-1+T)
        h = self.embed(x)  # (B, T, W)
        new_state = {}
        for i, block in enumerate(self.blocks):
            h, k, v = block(h, state[f"layer{i}_k"], state[f"layer{i}_v"], key_valid)
            new_state[f"layer{i}_k"] = k[:, T:]  # the newest K-1 keys/values
            new_state[f"layer{i}_v"] = v[:, T:]
        new_state["length"] = (length + T).clamp(max=K - 1)
        return self.head(self.norm(h)), new_state


@register("transformer", width_multiple=lambda kwargs: kwargs.get("num_heads", 4))
def _build_transformer(*, input_dim: int, output_dim: int, width: int, **kwargs) -> TransformerBackbone:
    """``transformer``: options ``num_layers`` (2), ``num_heads`` (4; width must be a multiple),
    ``context`` (K = 32 tokens seen per layer), ``ffn_mult`` (4)."""
    return TransformerBackbone(input_dim=input_dim, output_dim=output_dim, width=width, **kwargs)
