"""``lru_scan`` (metarl/models/lru.py: the LRU recurrence as one autograd node with a hand-written backward) equals
its references in value, first and second derivatives, and under ``torch.func.vmap(grad(...))``.

Oracles: a naive complex loop ``h_t = λ h_{t-1} + u_t`` (value); ``_scan_autograd``, the same chunked scan through
autograd op by op (the layer's previous path), for every derivative of the whole layer: inputs, initial state and
every parameter, first order and the gradient of a gradient-dependent scalar (what MAML's ``create_graph`` path
differentiates); ``torch.autograd.gradcheck`` / ``gradgradcheck`` (finite differences) on small shapes; a per-sample
loop for ``torch.func.vmap``. All float64 / complex128.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_all_close, assert_vmap_grads_equal_loop, second_order
from torch.func import functional_call

from metarl.models.lru import LRULayer, _scan_autograd, lru_scan

H, N = 4, 3
CPLX = torch.complex128


def _lam(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mod = 0.5 + 0.49 * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.polar(mod, 6.28 * torch.rand(n, generator=g, dtype=torch.float64))


def _cplx(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=CPLX, generator=torch.Generator().manual_seed(seed))


class _ReferenceLayer(LRULayer):
    """The same layer (same parameters) with the scan through autograd op by op."""

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._parallel(x, h, _scan_autograd)


def _layer(chunk_size: int, seed: int = 0, cls: type[LRULayer] = LRULayer) -> LRULayer:
    torch.manual_seed(seed)
    return cls(H, N, chunk_size=chunk_size).double()


def _layer_fn(layer: LRULayer):
    """(x, h0, *params) -> (y, h_T) of ``layer`` as a pure function."""
    names = [k for k, _ in layer.named_parameters()]

    def f(x, h0, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x, h0), strict=True)

    return f


def _inputs(layer: LRULayer, B: int, T: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, dtype=torch.float64, generator=g)
    h0 = torch.randn(B, 2 * N, dtype=torch.float64, generator=g)
    return (x, h0, *(p.detach().clone() for p in layer.parameters()))


def _scalar(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A loss that weighs every output and the final state differently (no randomness: it runs under vmap)."""
    w = torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).mul(0.7).sin()
    return (y * w).sum() + (h * h).sum() * 0.3 + (y**3).sum() * 0.01


@pytest.mark.parametrize("T, chunk", [(1, 32), (5, 2), (7, 7), (8, 3), (33, 32), (33, 1)])
def test_value_equals_naive_loop_and_reference(T, chunk):
    lam, u, h0 = _lam(N, T), _cplx(2, T, N, seed=T), _cplx(2, N, seed=T + 1)
    h, naive = h0, []
    for t in range(T):
        h = lam * h + u[:, t]
        naive.append(h)
    got = lru_scan(lam, u, h0, chunk_size=chunk)
    torch.testing.assert_close(got, torch.stack(naive, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, _scan_autograd(lam, u, h0, chunk_size=chunk), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T, chunk", [(1, 4), (6, 4), (9, 3)])
def test_first_and_second_derivatives_equal_autograd_reference(T, chunk):
    """Through the whole layer: d/d(x, h0, every parameter) of a loss, then d/d(all) of Σ v·grad (MAML's path)."""
    layer = _layer(chunk)
    names = ["x", "h0", *(k for k, _ in layer.named_parameters())]
    results = []
    for cls in (LRULayer, _ReferenceLayer):
        args = [a.clone().requires_grad_() for a in _inputs(layer, 2, T)]
        results.append(second_order(args, _scalar(*_layer_fn(_layer(chunk, cls=cls))(*args))))
    (g1, g2), (r1, r2) = results
    assert_all_close(names, g1, r1, "first derivative")
    assert_all_close(names, g2, r2, "second-order term")


def test_gradcheck_and_gradgradcheck_of_the_scan():
    """Finite differences on the scan itself (complex inputs: torch checks the Wirtinger derivatives)."""
    lam = _lam(2, 0).requires_grad_()
    u = _cplx(2, 5, 2, seed=1).requires_grad_()
    h0 = _cplx(2, 2, seed=2).requires_grad_()

    def f(lam, u, h0):
        return lru_scan(lam, u, h0, chunk_size=2)  # 3 chunks, the last one padded

    assert torch.autograd.gradcheck(f, (lam, u, h0))
    assert torch.autograd.gradgradcheck(f, (lam, u, h0))


def test_gradcheck_and_gradgradcheck_of_the_layer():
    layer = _layer(2)
    f = _layer_fn(layer)
    args = tuple(a.requires_grad_() for a in _inputs(layer, 1, 5))
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_vmap_of_grad_and_of_maml_meta_gradient_equal_per_sample_loop():
    """Per task i (its own parameters and sequences; h0 shared: the vmap rule's unbatched-input branch):
    grad of the loss, and the MAML meta-gradient ∇θ L(θ - α ∇L(θ)) (a gradient through the backward)."""
    layers = [_layer(3, seed=s) for s in range(3)]
    f = _layer_fn(layers[0])
    stacked = [torch.stack(ps) for ps in zip(*(_inputs(lay, 2, 7, seed=10 + i)[2:] for i, lay in enumerate(layers)))]
    xs = torch.stack([_inputs(layers[0], 2, 7, seed=20 + i)[0] for i in range(3)])
    h0 = _inputs(layers[0], 2, 7, seed=30)[1]

    def loss(ps, x, h0):
        return _scalar(*f(x, h0, *ps))

    assert_vmap_grads_equal_loop(loss, stacked, xs, h0)
