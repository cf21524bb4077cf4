"""Trial memory's learning side (``metarl.trial``) against hand-written references (float64, 1e-10).

- θ_1..θ_K the sampling side computed (``sample_trial``, from the carry each phase started with) equal θ_K
  recomputed differentiably over the whole trial (``adapt_trial``), and the query log-probs replayed from the
  carried state equal the sampled ones.
- The meta-gradient (``trial_meta_gradient_loop``) equals a reference written differently: every env replayed
  alone, one real step at a time (no masks, no layout), each inner step's partial derivative ∂L_k/∂θ_k taken by
  ``torch.func.grad`` with the phase's starting state held as a closed-over value, the state carried across
  episodes and phases as a function of θ, one ``torch.autograd.grad`` of the query loss.
- Returns across episode boundaries against a numpy loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_trial_sampler import make_envs, make_net

from metarl.rl import PreparedTask, clipped_surrogate_loss, vpg_loss
from metarl.trial import (
    adapt_trial,
    phase_advantages,
    phase_log_prob,
    sample_trial,
    trial_inner_step,
    trial_meta_gradient_loop,
    trial_returns_to_go,
)

LR, GAMMA, CLIP = 0.3, 0.9, 0.2


def run(backbone, inner_steps, name="navigation-2d", trial_inputs=True):
    envs = make_envs(name)
    net = make_net(envs, backbone, trial_inputs)
    batches, adapted, _ = sample_trial(envs, net, inner_steps=inner_steps, num_episodes=2 * len(envs), seed=5, lr=LR,
                                       gamma=GAMMA)
    phases = []
    for b in batches:
        t = b.tensors(torch.float64)
        t["advantages"] = phase_advantages(t, len(envs), gamma=GAMMA)
        phases.append(t)
    return envs, net, batches, adapted, phases


def ref_phase(net, params, phase, n, carries):
    """Env by env, real step by real step: log-probs (E, T) and each env's carry (state, prev action, prev reward)."""
    e, horizon = phase["mask"].shape
    quota = e // n
    rows, out = [], []
    for i in range(n):
        state, prev_a, prev_r = carries[i]
        for ep in range(i * quota, (i + 1) * quota):
            row = []
            for t in range(int(phase["mask"][ep].sum())):
                x = phase["obs"][ep, t:t + 1]
                a = phase["actions"][ep, t:t + 1]
                if net.trial_inputs:
                    x = torch.cat([x, prev_a, prev_r.view(1, 1), torch.full((1, 1), float(t == 0))], -1)
                    prev_a, prev_r = net.action_features(a, torch.float64), phase["rewards"][ep, t]
                y, state = torch.func.functional_call(net, params, (x, state))
                row.append(net.dist_log_prob(y, a)[0])
            rows.append(torch.stack(row + [torch.zeros((), dtype=torch.float64)] * (horizon - len(row))))
        out.append((state, prev_a, prev_r))
    return torch.stack(rows), out


def reference_meta_gradient(net, phases, n, *, first_order, lr=LR, clip=CLIP):
    theta = dict(net.named_parameters())
    carries = [(net.initial_state(1), torch.zeros(1, net.action_feature_dim, dtype=torch.float64),
                torch.zeros((), dtype=torch.float64))] * n
    params = theta
    for phase in phases[:-1]:
        def inner_loss(p, phase=phase, carries=carries):
            return vpg_loss(ref_phase(net, p, phase, n, carries)[0], phase["advantages"], phase["mask"])

        g = torch.func.grad(inner_loss)(params)  # ∂L_k/∂θ_k, the starting carries held as they are
        _, carries = ref_phase(net, params, phase, n, carries)  # the carry as a function of θ
        params = {k: params[k] - lr * (g[k].detach() if first_order else g[k]) for k in params}
    q = phases[-1]
    logp, _ = ref_phase(net, params, q, n, carries)
    loss = clipped_surrogate_loss(logp, q["logp"], q["advantages"], q["mask"], clip=clip)
    grads = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
    return {k: torch.zeros_like(theta[k]) if g is None else g for k, g in zip(theta, grads)}, logp


@pytest.mark.parametrize("name", ["navigation-2d", "bandit"])
@pytest.mark.parametrize("backbone", ["gru", "lru", "mlp"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_adapted_params_and_log_probs_recomputed_over_the_trial(name, backbone, inner_steps):
    envs, net, batches, adapted, phases = run(backbone, inner_steps, name)
    n = len(envs)
    theta_k, carry, _ = adapt_trial(net, dict(net.named_parameters()), phases[:-1], n, lr=LR, first_order=False)
    for k, v in adapted[-1].items():
        torch.testing.assert_close(theta_k[k].detach(), v, rtol=1e-10, atol=1e-10, msg=k)
        assert not torch.equal(v, dict(net.named_parameters())[k].detach()) or "bias" in k or k == "log_std"
    logp, _ = phase_log_prob(net, theta_k, phases[-1], n, carry)
    np.testing.assert_allclose(logp.detach().numpy(), batches[-1].logp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backbone", ["gru", "lru"])
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_hand_written_reference(backbone, inner_steps, first_order):
    envs, net, batches, _, phases = run(backbone, inner_steps)
    n = len(envs)
    ref, ref_logp = reference_meta_gradient(net, phases, n, first_order=first_order)
    np.testing.assert_allclose(ref_logp.detach().numpy(), batches[-1].logp, rtol=1e-10, atol=1e-10)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    task = PreparedTask(tuple(phases[:-1]), phases[-1])
    _, dlogp = trial_meta_gradient_loop(net, dict(net.named_parameters()), [task], num_envs=n, num_tasks_total=1,
                                        inner_lr=LR, clip=CLIP, first_order=first_order)
    assert dlogp < 1e-10
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], rtol=1e-9, atol=1e-12, msg=k)
    assert all(float(g.abs().sum()) > 0 for k, g in ref.items()), "every parameter gets a meta-gradient"


def test_returns_run_across_episode_boundaries_over_real_steps():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(2, 8))
    mask = np.array([[1, 1, 1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], float)
    want = np.zeros_like(rewards)
    for i in range(2):
        real = np.flatnonzero(mask[i])
        for j, t in enumerate(real):
            want[i, t] = sum(GAMMA ** (m - j) * rewards[i, real[m]] for m in range(j, len(real)))
    got = trial_returns_to_go(torch.tensor(rewards), torch.tensor(mask), gamma=GAMMA)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_zero_lr_trial_step_is_identity_without_a_gradient(first_order):
    """lr 0 (RL² evaluated in context): θ' equals θ as NEW tensors with dθ'/dθ = I, and no gradient is taken (the
    loss's graph is freed here, so computing one would raise)."""
    w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    loss = (w * w).sum()
    loss.backward()
    out = trial_inner_step(loss, {"w": w}, lr=0.0, first_order=first_order)
    assert out["w"] is not w and torch.equal(out["w"], w)
    (jac,) = torch.autograd.grad(out["w"].sum(), [w])
    assert torch.equal(jac, torch.ones_like(w))
