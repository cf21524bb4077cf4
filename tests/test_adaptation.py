"""Oracle tests for metarl.adaptation: Adapter == hand-written SGD; adaptation helps on held-out data of a task."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metarl.adaptation import AdaptationConfig, Adapter

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


class TinyGRU(nn.Module):
    """Backbone-shaped: forward(x, h) -> (y, h) with h batch-first (B, H); x (B, D) or (B, T, D)."""

    def __init__(self, d_in=3, hidden=4, d_out=2):
        super().__init__()
        self.cell, self.head = nn.GRUCell(d_in, hidden), nn.Linear(hidden, d_out)
        self.input_dim, self.output_dim, self.hidden = d_in, d_out, hidden

    def init_hidden(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden, dtype=dtype or self.head.weight.dtype)

    def forward(self, x, hidden_state=None):
        h = self.init_hidden(x.shape[0]) if hidden_state is None else hidden_state
        if x.ndim == 2:
            h = self.cell(x, h)
            return self.head(h), h
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            ys.append(self.head(h))
        return torch.stack(ys, 1), h


def reference_sgd(model, x, y, h, *, lr, steps, clip=None):
    """Plain SGD with torch.optim on a deep copy: the oracle for Adapter's in-place update."""
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = ref(x, h) if h is not None else ref(x)
        loss = F.mse_loss(out[0] if isinstance(out, tuple) else out, y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return ref, losses


@pytest.mark.parametrize("kind", ["linear", "gru_step", "gru_seq"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_update_step_equals_reference_sgd(kind, clip):
    torch.manual_seed(0)
    if kind == "linear":
        model, x, h = nn.Linear(3, 2), torch.randn(5, 7, 3), None
    else:
        model = TinyGRU()
        x = torch.randn(5, 3) if kind == "gru_step" else torch.randn(5, 6, 3)
        h = torch.randn(5, 4)
    y = torch.randn(*x.shape[:-1], 2)
    ref, losses = reference_sgd(model, x, y, h, lr=0.1, steps=4, clip=clip)
    adapter = Adapter(model, AdaptationConfig(learning_rate=0.1, num_steps=4, grad_clip=clip))
    loss, steps = adapter.update_step(x, y, hidden_state=h)
    assert steps == 4
    assert loss == pytest.approx(losses[-1], rel=1e-12)  # the last step's loss, before it was applied
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("steps", [1, 3])
def test_hidden_state_is_detached(steps):
    """A hidden state still attached to an earlier graph (back to x0 and to the weights) must not carry gradient into
    the past: the update equals plain SGD from the same state detached. Attached, ∂loss/∂h · ∂h/∂θ would add to the
    step (and a second step would backpropagate through the already-updated weights)."""
    torch.manual_seed(1)
    model = TinyGRU()
    x0 = torch.randn(2, 3, requires_grad=True)
    _, h = model(x0)  # h carries a graph back to x0 and to the weights
    x, y = torch.randn(2, 3), torch.randn(2, 2)
    ref, losses = reference_sgd(model, x, y, h.detach(), lr=0.1, steps=steps)
    loss, _ = Adapter(model, AdaptationConfig(learning_rate=0.1, num_steps=steps)).update_step(x, y, hidden_state=h)
    assert loss == pytest.approx(losses[-1], rel=1e-12)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_adaptation_lowers_held_out_error():
    """Tasks y = a·x with slope a; the model holds the family mean (a = 0). Adapting on 8 support points of the
    task a = 2 must lower the MSE on 200 *other* points of that task (not the adaptation batch) by > 10x."""
    g = torch.Generator().manual_seed(2)
    slope = 2.0
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x_support, x_held_out = torch.randn(8, 1, generator=g), torch.randn(200, 1, generator=g)
    y_support = slope * x_support + 0.05 * torch.randn(8, 1, generator=g)
    y_held_out = slope * x_held_out
    before = F.mse_loss(model(x_held_out), y_held_out).item()
    Adapter(model, AdaptationConfig(learning_rate=0.2, num_steps=20)).update_step(x_support, y_support)
    after = F.mse_loss(model(x_held_out), y_held_out).item()
    assert after < before / 10, (before, after)


def test_readme_example_runs_with_metarl_backbone():
    models = pytest.importorskip("metarl.models")
    model = models.StateSpaceModel(state_dim=8, input_dim=4, output_dim=4, hidden_dim=16)
    adapter = Adapter(model=model, config=AdaptationConfig(learning_rate=0.01, num_steps=5), device="cpu")
    hidden = model.init_hidden(batch_size=1)
    x, y = torch.randn(1, 4), torch.randn(1, 4)
    before = [p.detach().clone() for p in model.parameters()]
    ref, losses = reference_sgd(model, x, y, hidden, lr=0.01, steps=5)
    loss, steps = adapter.update_step(x=x, y=y, hidden_state=hidden)
    assert (loss, steps) == (pytest.approx(losses[-1], rel=1e-10), 5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("kwargs,match", [
    ({"learning_rate": 0.0}, r"learning_rate .* got 0.0"),
    ({"learning_rate": -1e-3}, r"learning_rate .* got -0.001"),
    ({"learning_rate": float("inf")}, r"learning_rate .* got inf"),
    ({"num_steps": 0}, r"num_steps .* got 0"),
    ({"num_steps": 2.0}, r"num_steps .* got 2.0"),
    ({"grad_clip": 0.0}, r"grad_clip .* got 0.0"),
    ({"loss_fn": 3}, r"loss_fn .* got 3"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptationConfig(**kwargs)


BAD = [
    ("wrong feature dim", torch.zeros(2, 5), torch.zeros(2, 2), None, r"x feature dim 5"),
    ("wrong output dim", torch.zeros(2, 3), torch.zeros(2, 6), None, r"y feature dim 6"),
    ("wrong rank", torch.zeros(3), torch.zeros(2), None, r"x must have shape .* got shape \(3,\)"),
    ("nan x", torch.full((2, 3), float("nan")), torch.zeros(2, 2), None, r"x contains 6 NaN/inf"),
    ("inf y", torch.zeros(2, 3), torch.full((2, 2), float("inf")), None, r"y contains 4 NaN/inf"),
    ("hidden batch", torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(3, 4), r"\(3, 4\).*batch 2"),
    ("hidden width", torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 9), r"\(2, 9\)"),
]


@pytest.mark.parametrize("case,x,y,h,match", BAD, ids=[b[0] for b in BAD])
def test_update_step_rejects_bad_input(case, x, y, h, match):
    model = TinyGRU()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        Adapter(model, AdaptationConfig(num_steps=1)).update_step(x, y, hidden_state=h)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_diverging_adaptation_raises_instead_of_writing_nan():
    model = nn.Linear(1, 1)
    x = torch.full((4, 1), 1e200)
    with pytest.raises(ValueError, match="non-finite"):
        Adapter(model, AdaptationConfig(learning_rate=1.0, num_steps=3)).update_step(x, torch.zeros(4, 1))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
