"""``lstm_sequence`` (metarl/models/rnn.py: the LSTM's time loop as one autograd node with a hand-written backward)
equals its references in value, first and second derivatives, and under ``torch.func.vmap(grad(...))``.

Oracles: torch's fused ``nn.LSTM`` (value); ``LSTMBackbone._sequence_cells``, the cell equations through autograd op
by op (the previous path), for every derivative of the whole backbone: inputs, both initial states and every
parameter, first order and the gradient of a gradient-dependent scalar (what MAML's ``create_graph`` path
differentiates); ``torch.autograd.gradcheck`` / ``gradgradcheck`` (finite differences) on small shapes; a per-sample
loop for ``torch.func.vmap``. All float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_all_close, assert_vmap_grads_equal_loop, second_order
from torch.func import functional_call

from metarl.models.rnn import LSTMBackbone, lstm_sequence

D, W, OUT = 3, 4, 2


class _ReferenceLSTM(LSTMBackbone):
    """The same backbone (same parameters) with the time loop through autograd op by op."""

    def _sequence(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._sequence_cells(x, state)


def _net(seed: int = 0, cls: type[LSTMBackbone] = LSTMBackbone, use_fused: bool = False) -> LSTMBackbone:
    torch.manual_seed(seed)
    return cls(input_dim=D, output_dim=OUT, width=W, use_fused=use_fused).double()


def _net_fn(net: LSTMBackbone):
    """(x, h0, c0, *params) -> (y, h_T, c_T) of ``net`` as a pure function."""
    names = [k for k, _ in net.named_parameters()]

    def f(x, h0, c0, *ps):
        y, s = functional_call(net, dict(zip(names, ps)), (x, {"h": h0, "c": c0}), strict=True)
        return y, s["h"], s["c"]

    return f


def _inputs(net: LSTMBackbone, B: int, T: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, dtype=torch.float64, generator=g)
    h0, c0 = (torch.randn(B, W, dtype=torch.float64, generator=g) for _ in range(2))
    return (x, h0, c0, *(p.detach().clone() for p in net.parameters()))


def _scalar(y: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A loss that weighs every output and both final states differently (no randomness: it runs under vmap)."""
    w = torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).mul(0.7).sin()
    return (y * w).sum() + (h * h).sum() * 0.3 - (c * c).sum() * 0.2 + (y**3).sum() * 0.01


@pytest.mark.parametrize("T", [1, 2, 9])
def test_value_equals_fused_lstm_and_reference(T):
    net, fused = _net(), _net(use_fused=True)
    x, h0, c0, *_ = _inputs(net, 3, T)
    y, h, c = _net_fn(net)(x, h0, c0, *net.parameters())
    for ref in (fused, _net(cls=_ReferenceLSTM)):
        y_r, s_r = ref(x, {"h": h0, "c": c0})
        for name, a, b in (("y", y, y_r), ("h", h, s_r["h"]), ("c", c, s_r["c"])):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=f"{name} vs {type(ref).__name__}")


@pytest.mark.parametrize("T", [1, 7])
def test_first_and_second_derivatives_equal_autograd_reference(T):
    """d/d(x, h0, c0, every parameter) of a loss, then d/d(all) of Σ v·grad + |grad|² (MAML's path)."""
    names = ["x", "h0", "c0", *(k for k, _ in _net().named_parameters())]
    results = []
    for cls in (LSTMBackbone, _ReferenceLSTM):
        net = _net(cls=cls)
        args = [a.clone().requires_grad_() for a in _inputs(net, 2, T)]
        results.append(second_order(args, _scalar(*_net_fn(net)(*args))))
    (g1, g2), (r1, r2) = results
    assert_all_close(names, g1, r1, "first derivative")
    assert_all_close(names, g2, r2, "second-order term")


def test_gradcheck_and_gradgradcheck_of_the_sequence():
    g = torch.Generator().manual_seed(0)
    gx, h0, c0, w = (torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_()
                     for s in ((2, 4, 8), (2, 2), (2, 2), (8, 2)))
    assert torch.autograd.gradcheck(lstm_sequence, (gx, h0, c0, w))
    assert torch.autograd.gradgradcheck(lstm_sequence, (gx, h0, c0, w))


def test_vmap_of_grad_and_of_maml_meta_gradient_equal_per_sample_loop():
    """Per task i (its own parameters and sequences; h0, c0 shared: the vmap rule's unbatched-input branch):
    grad of the loss, and the MAML meta-gradient ∇θ L(θ - α ∇L(θ)) (a gradient through the backward)."""
    nets = [_net(seed=s) for s in range(3)]
    f = _net_fn(nets[0])
    stacked = [torch.stack(ps) for ps in zip(*(_inputs(n, 2, 6, seed=10 + i)[3:] for i, n in enumerate(nets)))]
    xs = torch.stack([_inputs(nets[0], 2, 6, seed=20 + i)[0] for i in range(3)])
    _, h0, c0, *_ = _inputs(nets[0], 2, 6, seed=30)

    def loss(ps, x, h0, c0):
        return _scalar(*f(x, h0, c0, *ps))

    assert_vmap_grads_equal_loop(loss, stacked, xs, h0, c0)
