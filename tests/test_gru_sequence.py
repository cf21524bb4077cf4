"""``gru_sequence`` (metarl/models/rnn.py: the GRU's time loop as one autograd node with a hand-written backward)
equals its references in value, first and second derivatives, and under ``torch.func.vmap(grad(...))``.

Oracles: torch's fused ``nn.GRU`` (value); ``GRUBackbone._sequence_cells``, the cell equations through autograd op
by op, for every derivative of the whole backbone: inputs, the initial state and every parameter, first order and
the gradient of a gradient-dependent scalar (what MAML's ``create_graph`` path differentiates); the raw sequence
function against the cell loop for d/d(gx, h0, W_hh, b_hh); ``torch.autograd.gradcheck`` / ``gradgradcheck``
(finite differences) on small shapes; a per-sample loop for ``torch.func.vmap``. All float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_all_close, assert_vmap_grads_equal_loop, second_order
from torch.func import functional_call

from metarl.models.rnn import GRUBackbone, gru_sequence

D, W, OUT = 3, 4, 2


class _ReferenceGRU(GRUBackbone):
    """The same backbone (same parameters) with the time loop through autograd op by op."""

    def _sequence(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sequence_cells(x, h)


def _net(seed: int = 0, cls: type[GRUBackbone] = GRUBackbone, use_fused: bool = False) -> GRUBackbone:
    torch.manual_seed(seed)
    return cls(input_dim=D, output_dim=OUT, width=W, use_fused=use_fused).double()


def _net_fn(net: GRUBackbone):
    """(x, h0, *params) -> (y, h_T) of ``net`` as a pure function."""
    names = [k for k, _ in net.named_parameters()]

    def f(x, h0, *ps):
        return functional_call(net, dict(zip(names, ps)), (x, h0), strict=True)

    return f


def _inputs(net: GRUBackbone, B: int, T: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, dtype=torch.float64, generator=g)
    h0 = torch.randn(B, W, dtype=torch.float64, generator=g)
    return (x, h0, *(p.detach().clone() for p in net.parameters()))


def _scalar(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A loss that weighs every output and the final state differently (no randomness: it runs under vmap)."""
    w = torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).mul(0.7).sin()
    return (y * w).sum() + (h * h).sum() * 0.3 + (y**3).sum() * 0.01


@pytest.mark.parametrize("T", [1, 2, 9])
def test_value_equals_fused_gru_and_reference(T):
    net, fused = _net(), _net(use_fused=True)
    x, h0, *_ = _inputs(net, 3, T)
    y, h = _net_fn(net)(x, h0, *net.parameters())
    for ref in (fused, _net(cls=_ReferenceGRU)):
        y_r, h_r = ref(x, h0)
        for name, a, b in (("y", y, y_r), ("h", h, h_r)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=f"{name} vs {type(ref).__name__}")


def test_step_mode_equals_sequence_mode_on_both_paths():
    """``_step`` (what the sampler runs, one step at a time) against the sequence mode, fused and cell path."""
    x, h0, *_ = _inputs(_net(), 3, 5)
    for use_fused in (True, False):
        net = _net(use_fused=use_fused)
        y_seq, h_seq = net(x, h0)
        h, ys = h0, []
        for x_t in x.unbind(1):
            y_t, h = net(x_t, h)
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, 1), y_seq, rtol=1e-12, atol=1e-13, msg=f"fused={use_fused}")
        torch.testing.assert_close(h, h_seq, rtol=1e-12, atol=1e-13, msg=f"fused={use_fused}")


@pytest.mark.parametrize("T", [1, 7])
def test_first_and_second_derivatives_equal_autograd_reference(T):
    """d/d(x, h0, every parameter) of a loss, then d/d(all) of Σ v·grad + |grad|² (MAML's path)."""
    names = ["x", "h0", *(k for k, _ in _net().named_parameters())]
    results = []
    for cls in (GRUBackbone, _ReferenceGRU):
        net = _net(cls=cls)
        args = [a.clone().requires_grad_() for a in _inputs(net, 2, T)]
        results.append(second_order(args, _scalar(*_net_fn(net)(*args))))
    (g1, g2), (r1, r2) = results
    assert_all_close(names, g1, r1, "first derivative")
    assert_all_close(names, g2, r2, "second-order term")


def _cell_loop(gx: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """The GRU equations of the module docstring, step by step through autograd (gx holds b_ih)."""
    H, h, hs = h0.shape[-1], h0, []
    for gx_t in gx.unbind(1):
        gh = h @ w_hh.T + b_hh
        r = torch.sigmoid(gx_t[:, :H] + gh[:, :H])
        z = torch.sigmoid(gx_t[:, H : 2 * H] + gh[:, H : 2 * H])
        n = torch.tanh(gx_t[:, 2 * H :] + r * gh[:, 2 * H :])
        h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs, 1)


@pytest.mark.parametrize("T", [1, 6])
def test_sequence_function_derivatives_equal_cell_loop(T):
    """The raw function: d/d(gx, h0, W_hh, b_hh) and the second-order term, against the loop written out."""
    g = torch.Generator().manual_seed(5)
    B, H = 3, W
    base = [torch.randn(*s, dtype=torch.float64, generator=g) for s in ((B, T, 3 * H), (B, H), (3 * H, H), (3 * H,))]
    wy = torch.randn(B, T, H, dtype=torch.float64, generator=g)
    results = []
    for fn in (gru_sequence, _cell_loop):
        args = [a.clone().requires_grad_() for a in base]
        hs = fn(*args)
        results.append((hs.detach(), *second_order(args, (hs * wy).sum() + (hs**3).sum() * 0.1)))
    (v, g1, g2), (rv, r1, r2) = results
    torch.testing.assert_close(v, rv, rtol=1e-12, atol=1e-13)
    names = ["gx", "h0", "w_hh", "b_hh"]
    assert_all_close(names, g1, r1, "first derivative")
    assert_all_close(names, g2, r2, "second-order term")


def test_gradcheck_and_gradgradcheck_of_the_sequence():
    g = torch.Generator().manual_seed(0)
    gx, h0, w, b = (torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_()
                    for s in ((2, 4, 6), (2, 2), (6, 2), (6,)))
    assert torch.autograd.gradcheck(gru_sequence, (gx, h0, w, b))
    assert torch.autograd.gradgradcheck(gru_sequence, (gx, h0, w, b))


def test_vmap_of_grad_and_of_maml_meta_gradient_equal_per_sample_loop():
    """Per task i (its own parameters and sequences; h0 shared: the vmap rule's unbatched-input branch):
    grad of the loss, and the MAML meta-gradient ∇θ L(θ - α ∇L(θ)) (a gradient through the backward)."""
    nets = [_net(seed=s) for s in range(3)]
    f = _net_fn(nets[0])
    stacked = [torch.stack(ps) for ps in zip(*(_inputs(n, 2, 6, seed=10 + i)[2:] for i, n in enumerate(nets)))]
    xs = torch.stack([_inputs(nets[0], 2, 6, seed=20 + i)[0] for i in range(3)])
    _, h0, *_ = _inputs(nets[0], 2, 6, seed=30)

    def loss(ps, x, h0):
        return _scalar(*f(x, h0, *ps))

    assert_vmap_grads_equal_loop(loss, stacked, xs, h0)
