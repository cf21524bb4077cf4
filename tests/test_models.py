"""Oracles for metarl.models: sequence mode == step mode, batch independence, hand-written formulas, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark
from torch.func import functional_call

from metarl import models
from metarl.models import StateSpaceModel

D_IN, D_OUT = 5, 3
SMALL = {"transformer": {"num_heads": 2, "context": 4}}  # small windows so the tests cross the window edge


def _small(name: str, width: int = 8, **kwargs) -> models.Backbone:
    torch.manual_seed(0)
    opts = {**SMALL.get(name, {}), **kwargs}
    return models.build(name, input_dim=D_IN, output_dim=D_OUT, width=width, **opts).double()


def _steps(model, x, state):
    ys = []
    for t in range(x.shape[1]):
        y, state = model(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def _flat(state) -> torch.Tensor:
    if isinstance(state, dict):
        return torch.cat([state[k].reshape(-1).double() for k in sorted(state)]) if state else torch.zeros(0)
    return state.reshape(-1)


def _assert_states_close(a, b, tol=1e-10):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
    assert torch.allclose(_flat(a), _flat(b), atol=tol, rtol=0)


def test_available_names():
    assert {"ssm", "lstm", "gru", "mlp"} <= set(models.available())


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("prefix_len", [0, 3, 11])
def test_sequence_equals_steps_from_any_state(name, prefix_len):
    model = _small(name)
    torch.manual_seed(1)
    state = model.init_hidden(3, dtype=torch.float64)
    if prefix_len:  # continue from a non-initial state
        _, state = model(torch.randn(3, prefix_len, D_IN, dtype=torch.float64), state)
    x = torch.randn(3, 9, D_IN, dtype=torch.float64)
    y_seq, s_seq = model(x, state)
    y_step, s_step = _steps(model, x, state)
    assert y_seq.shape == (3, 9, D_OUT)
    assert torch.allclose(y_seq, y_step, atol=1e-10, rtol=0)
    _assert_states_close(s_seq, s_step)
    # and splitting the sequence in two carries the state exactly
    y1, s1 = model(x[:, :4], state)
    y2, s2 = model(x[:, 4:], s1)
    assert torch.allclose(torch.cat([y1, y2], dim=1), y_seq, atol=1e-10, rtol=0)
    _assert_states_close(s2, s_seq)


@pytest.mark.parametrize("name", models.available())
def test_rows_are_independent(name):
    model = _small(name)
    torch.manual_seed(2)
    x = torch.randn(4, 6, D_IN, dtype=torch.float64)
    y, _ = model(x)
    x2 = x.clone()
    x2[1] += torch.randn(6, D_IN, dtype=torch.float64)
    y2, _ = model(x2)
    others = [0, 2, 3]
    assert torch.allclose(y[others], y2[others], atol=1e-12, rtol=0)
    assert not torch.allclose(y[1], y2[1])


@pytest.mark.parametrize("name", models.available())
def test_memory_or_not(name):
    """Changing x_0 changes y_5 iff the backbone is stateful (window/receptive field permitting)."""
    model = _small(name)
    torch.manual_seed(3)
    x = torch.randn(2, 3, D_IN, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0] += 1.0
    y, _ = model(x)
    y2, _ = model(x2)
    assert torch.allclose(y[:, 1:], y2[:, 1:], atol=1e-12) is (not model.stateful)
    assert model.stateful == (name != "mlp")


@pytest.mark.parametrize("name", models.available())
def test_bad_shapes_raise_naming_the_shapes(name):
    model = _small(name)
    with pytest.raises(ValueError, match=r"\(2, 7\)"):
        model(torch.zeros(2, 7, dtype=torch.float64))  # wrong input width
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        model(torch.zeros(2, 3, 4, D_IN, dtype=torch.float64))  # wrong rank
    with pytest.raises(ValueError, match="positive int"):
        model.init_hidden(0)
    state = model.init_hidden(3)
    if model.stateful:  # a state for 3 rows must not broadcast against 2 rows (the original SSM silently did)
        with pytest.raises(ValueError, match="batch of 2"):
            model(torch.zeros(2, D_IN, dtype=torch.float64), state)
    else:
        with pytest.raises(ValueError, match="keys"):
            model(torch.zeros(2, D_IN, dtype=torch.float64), {"h": torch.zeros(2, 8)})


def test_state_of_wrong_width_raises():
    model = _small("gru")
    with pytest.raises(ValueError, match=r"\(2, 9\).*\(2, 8\)"):
        model(torch.zeros(2, D_IN, dtype=torch.float64), torch.zeros(2, 9, dtype=torch.float64))
    lstm = _small("lstm")
    with pytest.raises(ValueError, match="keys"):
        lstm(torch.zeros(2, D_IN, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ StateSpaceModel
def test_ssm_readme_example():
    model = StateSpaceModel(state_dim=128, input_dim=64, output_dim=32, hidden_dim=128)
    h = model.init_hidden(batch_size=4)
    assert h.shape == (4, 128) and not h.any()
    y, h2 = model(torch.randn(4, 64), h)
    assert y.shape == (4, 32) and h2.shape == (4, 128)


def test_ssm_matches_the_formula():
    """h_t = f(h_{t-1}) + W_in x_t + b_in; y_t = g(h_t) + W_skip x_t + b_skip, written out by hand."""
    torch.manual_seed(4)
    m = StateSpaceModel(state_dim=6, input_dim=D_IN, output_dim=D_OUT, hidden_dim=7).double()
    p = dict(m.named_parameters())

    def mlp(prefix, v):
        v = torch.relu(v @ p[f"{prefix}.0.weight"].T + p[f"{prefix}.0.bias"])
        return v @ p[f"{prefix}.2.weight"].T + p[f"{prefix}.2.bias"]

    x = torch.randn(2, 4, D_IN, dtype=torch.float64)
    h = torch.randn(2, 6, dtype=torch.float64)
    y, h_last = m(x, h)
    for t in range(4):
        h = mlp("state_transition", h) + x[:, t] @ p["input_to_state.weight"].T + p["input_to_state.bias"]
        y_ref = mlp("state_to_output", h) + x[:, t] @ p["input_to_output.weight"].T + p["input_to_output.bias"]
        assert torch.allclose(y[:, t], y_ref, atol=1e-12)
    assert torch.allclose(h_last, h, atol=1e-12)


# ------------------------------------------------------------------------------------------------ LSTM / GRU
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_and_cell_paths_agree(name):
    model = _small(name)
    torch.manual_seed(5)
    x = torch.randn(3, 7, D_IN, dtype=torch.float64)
    _, state = model(torch.randn(3, 2, D_IN, dtype=torch.float64))
    assert model.fused_for(x)
    y_fused, s_fused = model(x, state)
    y1_fused, _ = model(x[:, 0], state)
    model.use_fused = False
    assert not model.fused_for(x)
    y_cell, s_cell = model(x, state)
    y1_cell, _ = model(x[:, 0], state)
    assert torch.allclose(y_fused, y_cell, atol=1e-12)
    assert torch.allclose(y1_fused, y1_cell, atol=1e-12)
    _assert_states_close(s_fused, s_cell, tol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_second_order_grads_through_cell_path_match_fused(name):
    """d/dθ ||∇_θ L(θ)||² through the hand-written cell equals the same through nn.LSTM/nn.GRU (CPU)."""
    model = _small(name, width=4)
    torch.manual_seed(6)
    x = torch.randn(2, 5, D_IN, dtype=torch.float64)
    params = dict(model.named_parameters())

    def grad_norm_grad(use_fused):
        model.use_fused = use_fused
        y, _ = functional_call(model, params, (x,))
        grads = torch.autograd.grad(y.pow(2).sum(), list(params.values()), create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(params.values()))

    for g_cell, g_fused in zip(grad_norm_grad(False), grad_norm_grad(True)):
        assert torch.allclose(g_cell, g_fused, atol=1e-10)


@pytest.mark.parametrize("name", models.available())
def test_plain_ops_vmap_over_tasks_equals_each_task_alone(name):
    """Inside ``plain_ops()`` every backbone vmaps over a task axis (parameters AND inputs batched), equal to the
    per-task calls (fused kernels for lstm/gru) to 1e-12: what the batched meta-gradient relies on."""
    model = _small(name)
    torch.manual_seed(7)
    params = dict(model.named_parameters())
    tasks = 3
    batched = {k: v + 0.01 * torch.randn(tasks, *v.shape, dtype=v.dtype) for k, v in params.items()}
    x = torch.randn(tasks, 2, 6, D_IN, dtype=torch.float64)
    with models.plain_ops():
        assert models.plain_ops_active()
        if hasattr(model, "fused_for"):
            assert not model.fused_for(x[0])
        y = torch.vmap(lambda p, xi: functional_call(model, p, (xi,))[0])(batched, x)
    assert not models.plain_ops_active()
    for i in range(tasks):
        y_i, _ = functional_call(model, {k: v[i] for k, v in batched.items()}, (x[i],))
        assert torch.allclose(y[i], y_i, atol=1e-12, rtol=0), i


def test_stack_steps_equals_torch_stack_to_second_order():
    """``stack_steps`` (an O(T) backward of any order) has torch.stack's value, gradient and second derivative."""
    torch.manual_seed(8)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, 4, dtype=torch.float64)

    def rollout(stack):
        h, hs = torch.zeros(3, 4, dtype=torch.float64), []
        for x_t in x.unbind(1):
            h = torch.tanh(x_t + h @ w)
            hs.append(h)
        out = stack(hs)  # (3, 5, 4)
        (g,) = torch.autograd.grad((out * torch.arange(5.0, dtype=out.dtype)[:, None]).pow(2).sum(), w,
                                   create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(3).sum(), w)
        return out, g, gg

    for a, b in zip(rollout(models.stack_steps), rollout(lambda hs: torch.stack(hs, dim=1))):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- MLP
def test_mlp_matches_the_formula():
    m = _small("mlp", num_layers=2, activation="tanh")
    p = dict(m.named_parameters())
    x = torch.randn(4, D_IN, dtype=torch.float64)
    h = torch.tanh(F.linear(x, p["net.0.weight"], p["net.0.bias"]))
    h = torch.tanh(F.linear(h, p["net.2.weight"], p["net.2.bias"]))
    y, state = m(x)
    assert state == {} and torch.allclose(y, F.linear(h, p["net.4.weight"], p["net.4.bias"]), atol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        models.build("mlp", input_dim=2, output_dim=2, activation="gelu")


# ---------------------------------------------------------------------------------------- functional_call
@pytest.mark.parametrize("name", models.available())
def test_functional_call_uses_the_given_params_and_reaches_all(name):
    model = _small(name)
    torch.manual_seed(7)
    x = torch.randn(2, 4, D_IN, dtype=torch.float64)
    new = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_() for k, v in model.named_parameters()}
    y_func, _ = functional_call(model, new, (x,))
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(new[k])
    y_mod, _ = model(x)
    assert torch.allclose(y_func, y_mod, atol=1e-12)
    grads = torch.autograd.grad(y_func.sin().sum(), list(new.values()), allow_unused=True)
    missing = [k for k, g in zip(new, grads) if g is None or not g.abs().sum() > 0]
    assert not missing, f"{name}: parameters with no gradient: {missing}"


# ------------------------------------------------------------------------------------------------ registry
def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="available backbones: .*gru.*lstm"):
        models.build("nope", input_dim=2, output_dim=2)
    with pytest.raises(ValueError, match="available backbones"):
        models.build_matched("nope", target_params=100, input_dim=2, output_dim=2)


@pytest.mark.parametrize("field, value", [("input_dim", 0), ("output_dim", -1), ("width", True), ("width", 2.0)])
def test_build_validates_sizes(field, value):
    kwargs = {"input_dim": 3, "output_dim": 2, "width": 4, field: value}
    with pytest.raises(ValueError, match=f"`{field}` must be a positive int, got {value!r}"):
        models.build("gru", **kwargs)


def test_num_params_closed_form():
    d, h, o = D_IN, 8, D_OUT
    assert models.num_params(_small("gru")) == 3 * (d * h + h * h + 2 * h) + h * o + o
    assert models.num_params(_small("lstm")) == 4 * (d * h + h * h + 2 * h) + h * o + o
    assert models.num_params(_small("mlp")) == (d * h + h) + (h * h + h) + (h * o + o)
    assert models.num_params(_small("ssm")) == 2 * (h * h + h) + (h * h + h) + (h * o + o) + (d * h + h) + (d * o + o)


@pytest.mark.parametrize("name", models.available())
def test_build_matched_lands_near_target(name):
    target = 30_000
    model = models.build_matched(name, target_params=target, input_dim=17, output_dim=6, **SMALL.get(name, {}))
    n = models.num_params(model)
    assert abs(n - target) <= 0.1 * target, (name, n)
    width_of = {"ssm": "state_dim"}.get(name, "width")
    w = getattr(model, width_of)
    bigger = models.build(name, input_dim=17, output_dim=6, width=w + 8, **SMALL.get(name, {}))
    assert abs(models.num_params(bigger) - target) >= abs(n - target)  # a wider model is not closer
    with pytest.raises(ValueError, match="width"):
        models.build_matched(name, target_params=target, input_dim=17, output_dim=6, width=3)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        models.register("gru")(lambda **kw: None)


# --------------------------------------------------------------------------------------------- Transformer
@pytest.mark.parametrize("num_layers", [1, 2])
def test_transformer_window_semantics(num_layers):
    """y_t depends on exactly the last R = L·(K-1)+1 inputs: perturbing x_{t-R} leaves y_t, x_{t-R+1} does not."""
    K = 4
    model = _small("transformer", num_layers=num_layers, context=K)
    reach = num_layers * (K - 1) + 1
    torch.manual_seed(8)
    T = 2 * reach + 3
    x = torch.randn(2, T, D_IN, dtype=torch.float64)
    y, _ = model(x)
    t = T - 1
    for s, changes in [(t - reach, False), (t - reach + 1, True)]:
        x2 = x.clone()
        x2[:, s] += 1.0
        y2, _ = model(x2)
        assert torch.allclose(y[:, t], y2[:, t], atol=1e-12) is (not changes), (s, changes)
        assert torch.allclose(y[:, :s], y2[:, :s], atol=1e-12)  # causal


def test_transformer_state_is_a_window_cache():
    K = 4
    model = _small("transformer", num_layers=1, context=K)
    state = model.init_hidden(2, dtype=torch.float64)
    assert state["layer0_k"].shape == (2, K - 1, 8) and state["length"].dtype == torch.int64
    x = torch.randn(2, 10, D_IN, dtype=torch.float64)
    lengths = []
    for t in range(5):
        _, state = model(x[:, t], state)
        lengths.append(int(state["length"][0]))
    assert lengths == [1, 2, 3, 3, 3]
    # the cache holds the keys and values of the last K-1 steps
    k, v = model.blocks[0].qkv(model.blocks[0].norm1(model.embed(x[:, 2:5]))).split(8, dim=-1)[1:]
    assert torch.allclose(state["layer0_k"], k, atol=1e-12) and torch.allclose(state["layer0_v"], v, atol=1e-12)
    # a state whose rows have different fill levels: each row must match its own history
    _, s_a = model(x[:1, :1])
    _, s_b = model(x[1:, :6])
    mixed = {k: torch.cat([s_a[k], s_b[k]]) for k in s_a}
    y, _ = model(x[:, 6:], mixed)
    y_a, _ = model(torch.cat([x[:1, :1], x[:1, 6:]], dim=1))
    y_b, _ = model(x[1:])
    assert torch.allclose(y[0], y_a[0, 1:], atol=1e-10) and torch.allclose(y[1], y_b[0, 6:], atol=1e-10)


def test_transformer_width_must_split_into_heads():
    with pytest.raises(ValueError, match=r"`width` \(10\) must be a multiple of `num_heads` \(4\)"):
        models.build("transformer", input_dim=3, output_dim=2, width=10)


@pytest.mark.slow
def test_speed_benchmark_quick_runs(capsys):
    bench = load_benchmark("models_speed")
    before = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--no-memory", "--steps", "2"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    for name in models.available():
        assert f"| {name} |" in out
