"""Oracle tests for metarl.maml: hand-written meta-gradients, the linear-regression closed form, input checks.

The references below are written out with plain tensor ops and `torch.autograd.grad`; they never call maml.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metarl.maml import MetaMAML, adapt, functional_forward, inner_step, params_of, sanitize_grads

DT = torch.float64


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py



# ---------------------------------------------------------------------------------------------- models under test
class TinyMLP(nn.Module):
    """Stateless: forward(x) only, like nn.Linear (exercises the (x,) -> (y, None) path)."""

    def __init__(self, d_in=3, hidden=5, d_out=2):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)
        self.input_dim, self.output_dim = d_in, d_out

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyGRU(nn.Module):
    """Backbone-shaped recurrent model on top of torch's nn.GRU: forward(x, h) -> (y, h), h batch-first (B, H)."""

    def __init__(self, d_in=3, hidden=4, d_out=2):
        super().__init__()
        self.gru, self.head = nn.GRU(d_in, hidden, batch_first=True), nn.Linear(hidden, d_out)
        self.input_dim, self.output_dim, self.hidden = d_in, d_out, hidden

    def init_hidden(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden, device=device, dtype=dtype or self.head.weight.dtype)

    def forward(self, x, hidden_state=None):
        h0 = self.init_hidden(x.shape[0]) if hidden_state is None else hidden_state
        out, h = self.gru(x, h0.unsqueeze(0))  # (B, T, H), (1, B, H)
        return self.head(out), h.squeeze(0)


# ------------------------------------------------------------------------------------ hand-written references
def mlp_ref(w, x):
    w1, b1, w2, b2 = w
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def gru_ref(w, x, h):
    """GRU equations written out (torch gate order r, z, n), then the linear head."""
    w_ih, w_hh, b_ih, b_hh, w_o, b_o = w
    ys = []
    for t in range(x.shape[1]):
        gi, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh  # (B, 3H)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        ys.append(h @ w_o.T + b_o)
    return torch.stack(ys, 1)


def reference_meta_grad(apply, theta, tasks, *, alpha, steps, first_order):
    """∇θ 1/n Σ_i L_q,i(θ'_i) with θ'_i = k steps of θ - α∇L_s,i, written out explicitly."""
    theta = [t.detach().clone().requires_grad_() for t in theta]
    outer = 0.0
    for sx, sy, qx, qy, *h in tasks:
        fast = theta
        for _ in range(steps):
            support_loss = ((apply(fast, sx, *h) - sy) ** 2).mean()
            grads = torch.autograd.grad(support_loss, fast, create_graph=not first_order)
            fast = [f - alpha * g for f, g in zip(fast, grads)]
        outer = outer + ((apply(fast, qx, *h) - qy) ** 2).mean()
    outer = outer / len(tasks)
    return outer.detach(), torch.autograd.grad(outer, theta)


def make_tasks(n, *, batch=2, T=4, d_in=3, d_out=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(batch, T, d, generator=g, dtype=DT) for d in (d_in, d_out, d_in, d_out)) for _ in range(n)]


# ----------------------------------------------------------------------------------------- meta-gradient oracles
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_reference_stateless(steps, first_order):
    torch.manual_seed(0)
    model = TinyMLP().double()
    theta = [model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias]
    tasks = make_tasks(3)
    ref_loss, ref_grads = reference_meta_grad(mlp_ref, theta, tasks, alpha=0.3, steps=steps, first_order=first_order)
    maml = MetaMAML(model, inner_lr=0.3, outer_lr=1e-3, first_order=first_order, num_inner_steps=steps)
    loss = maml.meta_update(tasks)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for p, g in zip(theta, ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_reference_recurrent(steps, first_order):
    torch.manual_seed(1)
    model = TinyGRU().double()
    g = model.gru
    theta = [g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0, model.head.weight, model.head.bias]
    tasks = make_tasks(3, seed=1)
    h0 = torch.randn(3, 4)  # one row per task, expanded to each task's batch of 2
    ref_tasks = [(*t, h0[i : i + 1].expand(2, 4)) for i, t in enumerate(tasks)]
    ref_loss, ref_grads = reference_meta_grad(gru_ref, theta, ref_tasks, alpha=0.2, steps=steps, first_order=first_order)
    maml = MetaMAML(model, inner_lr=0.2, first_order=first_order, num_inner_steps=steps)
    loss = maml.meta_update(tasks, initial_hidden_state=h0)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    for p, ref in zip(theta, ref_grads):
        torch.testing.assert_close(p.grad, ref, rtol=1e-9, atol=1e-12)


def test_outer_step_is_adam_on_the_meta_gradient():
    """Adam's first step moves each weight by -lr·g/(|g| + eps) (bias corrections cancel at step 1)."""
    torch.manual_seed(2)
    model = TinyMLP().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    maml = MetaMAML(model, inner_lr=0.1, outer_lr=0.01)
    maml.meta_update(make_tasks(2))
    for n, p in model.named_parameters():
        g = p.grad
        torch.testing.assert_close(p.detach(), before[n] - 0.01 * g / (g.abs() + 1e-8))
        assert bool((g != 0).all()), f"parameter {n} got a zero meta-gradient entry"


def test_first_order_differs_from_second_order_for_curved_model():
    grads = {}
    for fo in (False, True):
        torch.manual_seed(3)
        model = TinyMLP().double()
        MetaMAML(model, inner_lr=0.5, first_order=fo).meta_update(make_tasks(2))
        grads[fo] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (grads[False] - grads[True]).abs().max() > 1e-4


# -------------------------------------------------------------------------------- linear regression closed forms
def _linreg(seed=4, n=12, d=3):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g))
    xs, xq = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ys, yq = torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)
    return model, xs, ys, xq, yq


def test_one_step_linear_regression_matches_closed_form():
    model, xs, ys, _, _ = _linreg()
    alpha, theta = 0.1, model.weight.detach().T  # (d, 1)
    expected = theta - alpha * (2 / xs.shape[0]) * xs.T @ (xs @ theta - ys)  # θ' = θ - α(2/N)Xᵀ(Xθ - y)
    fast = MetaMAML(model, inner_lr=alpha).adapt_task(xs, ys)
    torch.testing.assert_close(fast["weight"].T, expected)
    fast2 = adapt(lambda p: F.mse_loss(functional_forward(model, xs, None, p)[0], ys), params_of(model), lr=alpha)
    torch.testing.assert_close(fast2["weight"].T, expected)


def test_linear_regression_meta_gradient_closed_form():
    """SO: (I - αH_s)∇L_q(θ'), FO: ∇L_q(θ'), H_s = (2/N)X_sᵀX_s ≠ 0, so the two must differ by αH_s∇L_q(θ')."""
    model, xs, ys, xq, yq = _linreg()
    alpha, theta = 0.1, model.weight.detach().T.clone()
    n = xs.shape[0]
    theta_fast = theta - alpha * (2 / n) * xs.T @ (xs @ theta - ys)
    g_query = (2 / n) * xq.T @ (xq @ theta_fast - yq)  # (d, 1)
    hessian = (2 / n) * xs.T @ xs
    expected = {False: (torch.eye(3) - alpha * hessian) @ g_query, True: g_query}
    for first_order, want in expected.items():
        model.weight.grad = None
        MetaMAML(model, inner_lr=alpha, outer_lr=1e-12, first_order=first_order).meta_update([(xs, ys, xq, yq)])
        torch.testing.assert_close(model.weight.grad.T, want)
    assert (expected[False] - expected[True]).abs().max() > 1e-3


def test_first_order_equals_second_order_when_hessian_vanishes():
    """Linear model + L1 loss is piecewise linear in θ: ∇²L = 0 (a.e.), so FO and SO meta-gradients coincide."""
    model, xs, ys, xq, yq = _linreg()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {}
    for fo in (False, True):
        model.load_state_dict(state)
        model.weight.grad = None
        maml = MetaMAML(model, inner_lr=0.05, outer_lr=1e-12, first_order=fo, num_inner_steps=3)
        maml.meta_update([(xs, ys, xq, yq)], loss_fn=F.l1_loss)
        grads[fo] = model.weight.grad.clone()
    torch.testing.assert_close(grads[False], grads[True], rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------- functional core
def test_inner_step_does_not_mutate_and_leaves_unused_params():
    model = TinyMLP().double()
    extra = nn.Parameter(torch.ones(2))
    params = params_of(model)
    params["extra"] = extra
    before = {n: p.detach().clone() for n, p in params.items()}
    x = torch.randn(4, 3)
    loss = functional_forward(model, x, None, params)[0].pow(2).mean()
    new = inner_step(loss, params, lr={n: 0.1 for n in params})
    assert new["extra"] is extra  # unused -> unchanged (same tensor)
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
    assert not torch.equal(new["fc1.weight"], before["fc1.weight"])


def test_first_order_step_depends_on_theta_by_identity():
    model, xs, ys, _, _ = _linreg()
    params = params_of(model)
    loss = F.mse_loss(model(xs), ys)
    fast = inner_step(loss, params, lr=0.1, first_order=True)
    (jac,) = torch.autograd.grad(fast["weight"].sum(), [params["weight"]])
    torch.testing.assert_close(jac, torch.ones_like(jac))


def test_stateless_linear_accepts_sequences():
    model = nn.Linear(3, 2).double()
    maml = MetaMAML(model, inner_lr=0.1)
    loss = maml.meta_update(make_tasks(2))
    assert math.isfinite(loss)


# ------------------------------------------------------------------------------------------- hidden-state forms
def _loss_with(h, tasks, model_state):
    model = TinyGRU().double()
    model.load_state_dict(model_state)
    return MetaMAML(model, inner_lr=0.1).meta_loss(tasks, initial_hidden_state=h).item()


def test_hidden_state_readings_agree_with_list_form():
    torch.manual_seed(5)
    state = TinyGRU().double().state_dict()
    tasks = make_tasks(3, batch=2)
    rows = torch.randn(3, 4)  # (num_tasks, S): one row per task
    as_list = [rows[i : i + 1].expand(2, 4) for i in range(3)]
    assert _loss_with(rows, tasks, state) == pytest.approx(_loss_with(as_list, tasks, state), rel=1e-12)
    shared = torch.randn(2, 4)  # (B, S) with B=2 != 3 tasks: every task uses it
    assert _loss_with(shared, tasks, state) == pytest.approx(_loss_with([shared] * 3, tasks, state), rel=1e-12)
    square = torch.randn(2, 4)  # 2 tasks of batch 2: both readings fit -> one row per task wins
    two = tasks[:2]
    per_task = [square[i : i + 1].expand(2, 4) for i in range(2)]
    assert _loss_with(square, two, state) == pytest.approx(_loss_with(per_task, two, state), rel=1e-12)
    assert _loss_with(square, two, state) != pytest.approx(_loss_with([square] * 2, two, state), rel=1e-6)


# ------------------------------------------------------------------------------------------------- bad inputs
def _good():
    return make_tasks(2, batch=2)


BAD = [
    ("wrong feature dim", lambda t: [(torch.randn(2, 4, 5), *t[0][1:])], None, r"support_x feature dim 5"),
    ("wrong rank", lambda t: [(torch.randn(2, 4, 3, 1), *t[0][1:])], None, r"shape \(2, 4, 3, 1\)"),
    ("nan", lambda t: [(t[0][0], t[0][1], t[0][2].clone().fill_(float("nan")), t[0][3])], None, r"query_x contains"),
    ("inf", lambda t: [(t[0][0], t[0][1].clone().fill_(float("inf")), *t[0][2:])], None, r"support_y contains"),
    ("y mismatch", lambda t: [(t[0][0], torch.randn(2, 5, 2), *t[0][2:])], None, r"\(2, 5, 2\)"),
    ("hidden batch", lambda t: t, torch.zeros(3, 4), r"\(3, 4\)"),
    ("hidden width", lambda t: t, torch.zeros(2, 7), r"\(2, 7\)"),
    ("hidden list len", lambda t: t, [torch.zeros(2, 4)], r"list of 1 states for 2 tasks"),
    ("hidden list batch", lambda t: t, [torch.zeros(2, 4), torch.zeros(5, 4)], r"initial_hidden_state\[1\].*\(5, 4\)"),
    ("hidden nan", lambda t: t, torch.full((2, 4), float("nan")), r"initial_hidden_state contains"),
    ("no tasks", lambda t: [], None, r"tasks is empty"),
]


@pytest.mark.parametrize("case,make,hidden,match", BAD, ids=[b[0] for b in BAD])
def test_meta_update_rejects_bad_input(case, make, hidden, match):
    model = TinyGRU().double()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        MetaMAML(model).meta_update(make(_good()), initial_hidden_state=hidden)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_hidden_state_for_stateless_model_is_rejected():
    with pytest.raises(ValueError, match="takes no hidden state"):
        MetaMAML(TinyMLP().double()).meta_update(_good(), initial_hidden_state=torch.zeros(2, 4))


@pytest.mark.parametrize("kwargs,match", [
    ({"inner_lr": 0.0}, r"inner_lr .* got 0.0"),
    ({"inner_lr": -1.0}, r"inner_lr .* got -1.0"),
    ({"outer_lr": float("nan")}, r"outer_lr .* got nan"),
    ({"num_inner_steps": 0}, r"num_inner_steps .* got 0"),
    ({"num_inner_steps": 1.5}, r"num_inner_steps .* got 1.5"),
])
def test_constructor_rejects_bad_numbers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetaMAML(TinyMLP(), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": 0.0}, r"lr must .* got 0.0"),
    ({"lr": -0.1}, r"got -0.1"),
    ({"lr": {"weight": 0.1}}, r"no learning rate for parameters \['bias'\]"),
    ({"lr": {"weight": 0.1, "bias": -2.0}}, r"lr\['bias'\] .* got -2.0"),
    ({"lr": 0.1, "num_steps": 0}, r"num_steps .* got 0"),
])
def test_functional_adapt_rejects_bad_numbers(kwargs, match):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=match):
        adapt(lambda p: functional_forward(model, torch.ones(1, 2), None, p)[0].sum(), params_of(model), **kwargs)


def test_adapt_task_rejects_bad_steps():
    with pytest.raises(ValueError, match=r"num_steps .* got 0"):
        MetaMAML(nn.Linear(3, 2)).adapt_task(torch.randn(2, 4, 3), torch.randn(2, 4, 2), num_steps=0)


@pytest.mark.parametrize("grads,bad", [
    ({"a": torch.ones(2), "b": None}, None),
    ({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, "'b' has 1 non-finite"),
    ({"a": torch.tensor([float("inf"), float("-inf")])}, "'a' has 2 non-finite"),
    ({}, None),
])
def test_sanitize_grads_table(grads, bad):
    if bad is None:
        assert sanitize_grads(grads) is grads
    else:
        with pytest.raises(ValueError, match=bad):
            sanitize_grads(grads)


# --------------------------------------------------------------------------------------- metarl.models backbones
def _backbone(name):
    models = pytest.importorskip("metarl.models")
    torch.manual_seed(6)
    if name == "ssm":
        return models.StateSpaceModel(state_dim=4, input_dim=3, output_dim=2, hidden_dim=6).double()
    return models.build(name, input_dim=3, output_dim=2, width=4).double()


@pytest.mark.parametrize("name", ["gru", "ssm", "mlp", "lstm"])
@pytest.mark.parametrize("steps,first_order", [(1, False), (3, False), (3, True)])
def test_meta_gradient_matches_reference_for_backbones(name, steps, first_order):
    """Reference: the inner loop written out with torch.autograd.grad; the forward via torch.func.functional_call."""
    model = _backbone(name)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = [p for n, p in model.named_parameters() if p.requires_grad]
    tasks = make_tasks(2, seed=7)
    ref_state = model.init_hidden(1)  # one row per task: (2 tasks, ...) per state tensor
    if name == "mlp":
        h0 = None
    elif isinstance(ref_state, dict):
        h0 = {k: torch.randn(2, *v.shape[1:]) for k, v in ref_state.items()}
    else:
        h0 = torch.randn(2, *ref_state.shape[1:])

    def row(i):
        if isinstance(h0, dict):
            return {k: v[i : i + 1].expand(2, -1) for k, v in h0.items()}
        return h0[i : i + 1].expand(2, -1)

    def apply(w, x, *h):
        return torch.func.functional_call(model, dict(zip(names, w)), (x, h[0] if h else None))[0]

    ref_tasks = tasks if h0 is None else [(*t, row(i)) for i, t in enumerate(tasks)]
    ref_loss, ref_grads = reference_meta_grad(apply, theta, ref_tasks, alpha=0.1, steps=steps, first_order=first_order)
    loss = MetaMAML(model, inner_lr=0.1, first_order=first_order, num_inner_steps=steps).meta_update(
        tasks, initial_hidden_state=h0
    )
    assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    for n, p, ref in zip(names, theta, ref_grads):
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{name}: {n} got no meta-gradient"
        torch.testing.assert_close(p.grad, ref, rtol=1e-9, atol=1e-12)


def test_an_inner_step_of_zero_keeps_theta_but_meta_maml_refuses_it():
    """lr = 0 is a legal inner step (θ' = θ: the held-out step of a policy that adapts in context only); the
    research API's MetaMAML still asks for an inner lr > 0, and a negative lr is refused everywhere."""
    model = torch.nn.Linear(3, 1)
    params = {k: v for k, v in model.named_parameters()}
    loss = model(torch.randn(4, 3)).pow(2).sum()
    kept = inner_step(loss, params, lr=0.0, first_order=True)
    assert all(torch.equal(kept[k], params[k]) for k in params)
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0"):
        inner_step(loss, params, lr=-0.1)
    with pytest.raises(ValueError, match=r"inner_lr must be a finite number > 0"):
        MetaMAML(model, inner_lr=0.0)


@pytest.mark.parametrize("lr", [0.0, {"weight": 0.0, "bias": 0}])
@pytest.mark.parametrize("first_order", [False, True])
def test_zero_lr_step_returns_theta_without_a_gradient(lr, first_order):
    """lr 0 (RL²'s in-context evaluation): θ' is θ itself, and no gradient is taken — the loss's graph is already
    freed here, so computing one would raise."""
    model, xs, ys, _, _ = _linreg()
    params = params_of(model)
    loss = F.mse_loss(model(xs), ys)
    loss.backward()  # frees the graph: a second backward through it raises
    fast = inner_step(loss, params, lr=lr, first_order=first_order)
    assert list(fast) == list(params) and all(fast[n] is params[n] for n in params)
