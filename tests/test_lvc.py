"""ProMP's LVC inner objective (``metarl.rl.lvc_loss``) against closed forms and hand-written references (float64).

On fixed episodes with a small tanh Gaussian policy: the value is -mean(Â) (the ratio π/⊥π is 1 at θ); the gradient
is the VPG surrogate's; the Hessian-vector product is the hand-written -mean_t Â_t (∇² log π_t + ∇log π_t ∇log π_tᵀ) v;
the second-order meta-gradient through an LVC inner step equals one computed with ``torch.autograd`` from that
written-out inner step; and the per-task loop and the batched meta-gradient agree with objective="lvc".
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gaussian_mlp

from metarl import rl
from metarl.meta_batch import meta_gradient_batched

E, T, D, A, H = 3, 5, 4, 2, 6  # episodes, steps, obs dim, action dim, hidden


@pytest.fixture
def setup(float64):
    g = torch.Generator().manual_seed(0)
    params = tiny_gaussian_mlp(g, D, H, A)
    obs = torch.randn(E, T, D, generator=g)
    actions = torch.randn(E, T, A, generator=g)
    mask = torch.ones(E, T)
    mask[1, 3:] = 0.0  # a shorter episode
    adv = torch.randn(E, T, generator=g) * mask
    return params, obs, actions, mask, adv


def log_prob(p, obs, actions):
    mean = torch.tanh(obs @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]  # (E, T, A)
    z = (actions - mean) / p["log_std"].exp()
    return (-0.5 * z**2 - p["log_std"] - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)  # (E, T)


def flat(d: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def unflat(x: torch.Tensor, like: dict) -> dict:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = x[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


def test_value_is_minus_the_mean_advantage(setup):
    params, obs, actions, mask, adv = setup
    loss = rl.lvc_loss(log_prob(params, obs, actions), adv, mask)
    assert float(loss) == pytest.approx(-float((adv * mask).sum() / mask.sum()), rel=1e-12)


def test_gradient_equals_the_vpg_surrogates(setup):
    params, obs, actions, mask, adv = setup
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    g_lvc = torch.autograd.grad(rl.lvc_loss(log_prob(p, obs, actions), adv, mask), list(p.values()))
    g_vpg = torch.autograd.grad(rl.vpg_loss(log_prob(p, obs, actions), adv, mask), list(p.values()))
    for a, b in zip(g_lvc, g_vpg):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_hessian_vector_product_is_the_hand_written_one(setup):
    params, obs, actions, mask, adv = setup
    x = flat(params).clone().requires_grad_()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    loss = rl.lvc_loss(log_prob(unflat(x, params), obs, actions), adv, mask)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (hvp,) = torch.autograd.grad(g @ v, x)
    # hand-written: -(1/N) Σ_t m_t Â_t (∇² log π_t v + ∇log π_t (∇log π_t · v)), per step with autograd on log π_t
    n = mask.sum()
    want = torch.zeros_like(x)
    logp = log_prob(unflat(x, params), obs, actions)
    for e in range(E):
        for t in range(T):
            if mask[e, t] == 0:
                continue
            (score,) = torch.autograd.grad(logp[e, t], x, create_graph=True, retain_graph=True)
            (curv,) = torch.autograd.grad(score @ v, x, retain_graph=True)
            want -= adv[e, t] * (curv + score.detach() * (score.detach() @ v)) / n
    torch.testing.assert_close(hvp, want, rtol=1e-10, atol=1e-12)
    # and it is NOT the VPG surrogate's Hessian (which lacks the score outer product)
    loss_vpg = rl.vpg_loss(log_prob(unflat(x, params), obs, actions), adv, mask)
    (g2,) = torch.autograd.grad(loss_vpg, x, create_graph=True)
    (hvp_vpg,) = torch.autograd.grad(g2 @ v, x)
    assert (hvp - hvp_vpg).abs().max() > 1e-3


def _task(obs, actions, mask, adv, logp_old):
    batch = {"obs": obs, "actions": actions, "mask": mask, "advantages": adv, "logp": logp_old,
             "rewards": torch.zeros_like(mask)}
    return rl.PreparedTask(support=(batch,), query=dict(batch))


def test_meta_gradient_through_an_lvc_step_equals_a_written_out_reference(setup):
    params, obs, actions, mask, adv = setup
    lr, clip = 0.1, 0.3
    with torch.no_grad():
        logp_old = log_prob(params, obs, actions)
    q_obs, q_adv = obs.flip(0), adv.flip(0)  # query episodes differ from the support ones
    task = rl.PreparedTask(support=(_task(obs, actions, mask, adv, logp_old).support[0],),
                           query={"obs": q_obs, "actions": actions, "mask": mask, "advantages": q_adv,
                                  "logp": logp_old, "rewards": torch.zeros_like(mask)})
    # reference: θ' = θ - α ∇ LVC(θ), written here with autograd.grad(create_graph=True), then the clipped surrogate
    theta = {k: v.clone().requires_grad_() for k, v in params.items()}
    lp = log_prob(theta, obs, actions)
    inner = -((torch.exp(lp - lp.detach()) * adv * mask).sum() / mask.sum())
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    fast = {k: v - lr * g for (k, v), g in zip(theta.items(), grads)}
    ratio = torch.exp(log_prob(fast, q_obs, actions) - logp_old)
    surr = torch.minimum(ratio * q_adv, ratio.clamp(1 - clip, 1 + clip) * q_adv)
    ref = torch.autograd.grad(-(surr * mask).sum() / mask.sum(), list(theta.values()))
    for run in (rl.meta_gradient_loop, meta_gradient_batched):
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        run(log_prob, p, [task], num_tasks_total=1, inner_lr=lr, gamma=0.99, clip=clip, objective="lvc")
        for (k, v), r in zip(p.items(), ref):
            torch.testing.assert_close(v.grad, r, rtol=1e-9, atol=1e-12, msg=f"{run.__name__}: {k}")
    # the VPG meta-gradient differs (the LVC term changes the second-order part)
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    rl.meta_gradient_loop(log_prob, p, [task], num_tasks_total=1, inner_lr=lr, gamma=0.99, clip=clip)
    assert max(float((v.grad - r).abs().max()) for v, r in zip(p.values(), ref)) > 1e-6


def test_unknown_objective_is_named():
    with pytest.raises(ValueError, match=r"inner_objective = 'dice' is invalid: allowed \['lvc', 'vpg'\]"):
        rl.inner_objective("dice")


def test_config_field_validates_and_reaches_the_learner():
    from rllib_ext.config import MAMLConfig

    with pytest.raises(ValueError, match="inner_objective"):
        MAMLConfig().meta(task="navigation-2d", inner_objective="trpo").validate_meta()
    MAMLConfig().meta(task="navigation-2d", inner_objective="lvc").validate_meta()
