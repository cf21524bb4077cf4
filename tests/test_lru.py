"""Oracles for the LRU (metarl/models/lru.py): a naive complex reference, mode agreement, stability, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from metarl import models
from metarl.models.lru import R_MAX, LRULayer

H, N = 6, 5


def _layer(chunk_size: int = 7, seed: int = 0) -> LRULayer:
    torch.manual_seed(seed)
    return LRULayer(H, N, chunk_size=chunk_size).double()


def _reference(layer: LRULayer, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive loop in torch.complex: h_t = λ h_{t-1} + γ (B x_t), y_t = Re(C h_t) + D x_t."""
    lam = R_MAX * torch.exp(-torch.exp(layer.nu_log)) * torch.exp(1j * torch.exp(layer.theta_log))
    b = torch.complex(layer.B_re, layer.B_im) * torch.exp(layer.gamma_log)[:, None]
    c = torch.complex(layer.C_re, layer.C_im)
    h = torch.complex(h0[:, :N], h0[:, N:])
    ys = []
    for t in range(x.shape[1]):
        h = lam * h + x[:, t].to(b.dtype) @ b.T
        ys.append((h @ c.T).real + layer.D * x[:, t])
    return torch.stack(ys, dim=1), torch.cat([h.real, h.imag], dim=-1)


@pytest.mark.parametrize("T", [1, 2, 6, 7, 8, 50])
def test_both_modes_match_naive_complex_reference(T):
    layer = _layer()
    x = torch.randn(3, T, H, dtype=torch.float64)
    h0 = torch.randn(3, 2 * N, dtype=torch.float64)
    y_ref, h_ref = _reference(layer, x, h0)
    y_par, h_par = layer(x, h0)
    assert torch.allclose(y_par, y_ref, atol=1e-12) and torch.allclose(h_par, h_ref, atol=1e-12)
    h = h0
    for t in range(T):
        y_t, h = layer.step(x[:, t], h)
        assert torch.allclose(y_t, y_ref[:, t], atol=1e-12)
    assert torch.allclose(h, h_ref, atol=1e-12)


@pytest.fixture
def one_thread():
    """Long step loops of tiny ops run far faster on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("T", [1, 31, 32, 33, 257, 2000])
@torch.no_grad()
def test_parallel_equals_step_and_any_split(T, one_thread):
    torch.manual_seed(T)
    model = models.build("lru", input_dim=4, output_dim=3, width=8, state_dim=N).double()
    x = torch.randn(2, T, 4, dtype=torch.float64)
    _, state = model(torch.randn(2, 5, 4, dtype=torch.float64))  # a non-initial state
    y_par, s_par = model(x, state)
    scale = y_par.abs().max()
    s = state
    ys = []
    for t in range(T):
        y, s = model(x[:, t], s)
        ys.append(y)
    assert (torch.stack(ys, dim=1) - y_par).abs().max() <= 1e-8 * scale
    assert (s - s_par).abs().max() <= 1e-8 * s_par.abs().max()
    cuts = sorted(torch.randint(0, T + 1, (3,)).tolist())  # random split points (empty pieces allowed)
    s, ys = state, []
    for a, b in zip([0, *cuts], [*cuts, T]):
        if b > a:
            y, s = model(x[:, a:b], s)
            ys.append(y)
    assert (torch.cat(ys, dim=1) - y_par).abs().max() <= 1e-8 * scale
    assert (s - s_par).abs().max() <= 1e-8 * s_par.abs().max()


def test_chunk_size_does_not_change_the_result():
    x = torch.randn(2, 45, H, dtype=torch.float64)
    h0 = torch.randn(2, 2 * N, dtype=torch.float64)
    y1, h1 = _layer(chunk_size=1)(x, h0)
    for chunk in (4, 45, 64):
        y2, h2 = _layer(chunk_size=chunk)(x, h0)
        assert torch.allclose(y1, y2, atol=1e-12) and torch.allclose(h1, h2, atol=1e-12)


@torch.no_grad()
def test_step_weight_cache_follows_parameter_updates():
    """Acting caches λ and the folded weights; in-place updates, .data swaps and .double() must invalidate it."""
    layer = _layer()
    x, h0 = torch.randn(2, 3, H, dtype=torch.float64), torch.randn(2, 2 * N, dtype=torch.float64)
    for update in (lambda: layer.nu_log.add_(0.3), lambda: setattr(layer.B_im, "data", layer.B_im.data * 2),
                   lambda: layer.theta_log.copy_(layer.theta_log + 1.0)):
        layer.step(x[:, 0], h0)  # fills the cache
        update()
        y_step, _ = layer.step(x[:, 0], h0)
        y_par, _ = layer(x[:, :1], h0)
        assert torch.allclose(y_step, y_par[:, 0], atol=1e-12)
    layer.float()
    y_step, _ = layer.step(x[:, 0].float(), h0.float())
    assert y_step.dtype == torch.float32


def test_init_on_the_ring():
    torch.manual_seed(0)
    layer = LRULayer(16, 2000, r_min=0.5, r_max=0.99, max_phase=math.pi)
    lr, li = layer.lambda_re_im()
    mod = torch.sqrt(lr**2 + li**2)
    assert mod.min() >= 0.5 - 1e-5 and mod.max() <= 0.99 + 1e-5
    assert abs(float((mod**2 <= (0.5**2 + 0.99**2) / 2).float().mean()) - 0.5) < 0.05  # uniform by area
    assert torch.exp(layer.theta_log).max() <= math.pi + 1e-5
    assert torch.allclose(torch.exp(layer.gamma_log), torch.sqrt(1 - mod**2), atol=1e-5)


def test_lambda_stable_for_any_nu_in_float32():
    layer = LRULayer(4, 201)
    with torch.no_grad():
        layer.nu_log.copy_(torch.linspace(-50, 50, 201))
    lr, li = layer.lambda_re_im()
    mod = torch.sqrt(lr**2 + li**2)
    assert torch.isfinite(mod).all() and (mod < 1).all() and (mod <= R_MAX + 1e-6).all()


def test_long_sequence_float32_stays_finite():
    torch.manual_seed(0)
    model = models.build("lru", input_dim=3, output_dim=2, width=16, state_dim=8)
    with torch.no_grad():
        model.blocks[0].lru.nu_log[:4] = -50.0  # |λ| = R_MAX: the slowest possible decay
    x = torch.randn(2, 10_000, 3)
    y, s = model(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    y_tail, _ = model(x[:, 5000:], model(x[:, :5000])[1])  # carried through the state
    assert torch.allclose(y_tail, y[:, 5000:], atol=1e-3, rtol=1e-3)


def test_gradcheck_small_instance():
    layer = LRULayer(2, 2, chunk_size=2).double()
    names = [k for k, _ in layer.named_parameters()]
    x = torch.randn(1, 5, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def f(x, h0, *ps):
        y, h = functional_call(layer, dict(zip(names, ps)), (x, h0))
        return y, h

    assert torch.autograd.gradcheck(f, (x, h0, *params))
    assert torch.autograd.gradgradcheck(f, (x, h0, *params))


def test_maml_meta_gradient_matches_finite_differences():
    """Outer loss F(θ) = L_q(θ - α ∇L_s(θ)); autograd's second-order ∇F vs central differences along directions."""
    torch.manual_seed(1)
    model = models.build("lru", input_dim=2, output_dim=1, width=4, state_dim=3, chunk_size=3).double()
    names = [k for k, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    xs, ys = torch.randn(2, 7, 2, dtype=torch.float64), torch.randn(2, 7, 1, dtype=torch.float64)
    xq, yq = torch.randn(2, 7, 2, dtype=torch.float64), torch.randn(2, 7, 1, dtype=torch.float64)
    alpha = 0.1

    def loss(ps, x, y):
        return (functional_call(model, dict(zip(names, ps)), (x,))[0] - y).pow(2).mean()

    def outer(ps, create_graph):
        grads = torch.autograd.grad(loss(ps, xs, ys), ps, create_graph=create_graph)
        return loss([p - alpha * g for p, g in zip(ps, grads)], xq, yq)

    ps = [t.clone().requires_grad_() for t in theta]
    meta_grad = torch.autograd.grad(outer(ps, True), ps)
    ps_fo = [t.clone().requires_grad_() for t in theta]
    first_order = torch.autograd.grad(outer(ps_fo, False), ps_fo)  # drops the Hessian term: must be caught
    fo_gaps = []
    eps = 1e-5
    for _ in range(3):
        v = [torch.randn_like(t) for t in theta]

        def at(sign, v=v):
            return outer([(t + sign * eps * d).requires_grad_() for t, d in zip(theta, v)], False).item()

        fd = (at(1) - at(-1)) / (2 * eps)
        exact = sum((g * d).sum() for g, d in zip(meta_grad, v)).item()
        assert abs(fd - exact) <= 1e-6 * max(1.0, abs(fd)), (fd, exact)
        fo_gaps.append(abs(fd - sum((g * d).sum() for g, d in zip(first_order, v)).item()))
    assert max(fo_gaps) > 1e-4  # the check is sharp enough to see the second-order term


@pytest.mark.parametrize("bad_x, match", [
    (torch.zeros(2, 3, 5, 7), r"\(2, 3, 5, 7\)"),
    (torch.zeros(2, 7), r"\(2, 7\)"),
    (torch.zeros(2, 4, 7), r"\(2, 4, 7\)"),
])
def test_bad_inputs_raise_naming_shapes(bad_x, match):
    model = models.build("lru", input_dim=4, output_dim=3, width=8, state_dim=N)
    with pytest.raises(ValueError, match=match):
        model(bad_x)


def test_bad_state_raises_naming_shapes():
    model = models.build("lru", input_dim=4, output_dim=3, width=8, state_dim=N, num_blocks=2)
    assert model.init_hidden(3).shape == (3, 2, 2 * N)
    with pytest.raises(ValueError, match=r"\(3, 2, 8\).*\(3, 2, 10\)"):
        model(torch.zeros(3, 4), torch.zeros(3, 2, 8))
    with pytest.raises(ValueError, match=r"\(2, 2, 10\).*\(3, 2, 10\)"):
        model(torch.zeros(3, 6, 4), torch.zeros(2, 2, 10))


@pytest.mark.parametrize("kwargs, match", [
    ({"r_min": 0.9, "r_max": 0.5}, "r_min"), ({"r_max": 1.0}, "r_max"), ({"max_phase": 7.0}, "max_phase"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build("lru", input_dim=2, output_dim=2, **kwargs)
