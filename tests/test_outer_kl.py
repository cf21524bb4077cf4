"""ProMP's KL term on the outer step (``outer_kl_coeff``, ``outer_target_kl``) against closed forms and references.

Core (float64, no Ray): the per-step Gaussian and categorical KL equal the closed forms written in numpy; the
query KL of ``metarl.rl.query_kls`` (post-update policy before vs after a change of θ) equals the numpy formula
on the same distributions; its gradient through the second-order inner step equals ``torch.autograd`` of a
hand-written inner step and KL formula. Learner (RLlib, float64): ``outer_kl_coeff=0`` updates θ bit for bit as the
plain loop of Adam steps on the clipped surrogate; ``outer_kl_coeff > 0`` adds coeff · ∇KL from the second step on;
``outer_target_kl`` stops after the step whose KL exceeds it (a target placed between the KLs after steps 1 and 2).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import ray
import torch
from conftest import tiny_gaussian_mlp

from metarl import rl
from metarl.meta_batch import meta_gradient_batched
from metarl.policy_net import functional_log_prob
from rllib_ext.algorithm import MAMLConfig
from rllib_ext.jobs import TaskJob
from rllib_ext.rllib_internals import local_learner

E, T, D, A, H = 3, 5, 4, 2, 6  # episodes, steps, obs dim, action dim, hidden


# --- core: closed forms -------------------------------------------------------------------------------------------
def np_gaussian_kl(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """KL(N(μo, σo²) ‖ N(μn, σn²)) per dimension, summed: ½[σo²/σn² + (μn-μo)²/σn² - 1 + ln(σn²/σo²)]."""
    mu_o, ls_o = np.split(old, 2, axis=-1)
    mu_n, ls_n = np.split(new, 2, axis=-1)
    var_o, var_n = np.exp(2 * ls_o), np.exp(2 * ls_n)
    return (0.5 * (var_o / var_n + (mu_n - mu_o) ** 2 / var_n - 1.0 + np.log(var_n / var_o))).sum(-1)


def test_gaussian_and_categorical_kl_equal_the_closed_forms(float64):
    rng = np.random.default_rng(0)
    old, new = rng.normal(size=(E, T, 2 * A)), rng.normal(size=(E, T, 2 * A))
    got = rl.diag_gaussian_kl(torch.tensor(old), torch.tensor(new)).numpy()
    np.testing.assert_allclose(got, np_gaussian_kl(old, new), rtol=1e-12)
    assert np.abs(rl.diag_gaussian_kl(torch.tensor(old), torch.tensor(old)).numpy()).max() < 1e-14
    lo, ln = rng.normal(size=(E, T, 3)), rng.normal(size=(E, T, 3))
    po, pn = np.exp(lo) / np.exp(lo).sum(-1, keepdims=True), np.exp(ln) / np.exp(ln).sum(-1, keepdims=True)
    want = (po * np.log(po / pn)).sum(-1)
    np.testing.assert_allclose(rl.categorical_kl(torch.tensor(lo), torch.tensor(ln)).numpy(), want, rtol=1e-12)


# --- core: the query KL of the post-update policy -------------------------------------------------------------------
@pytest.fixture
def setup(float64):
    g = torch.Generator().manual_seed(0)
    params = tiny_gaussian_mlp(g, D, H, A)
    tasks = []
    for _ in range(2):
        mask = torch.ones(E, T)
        mask[1, 3:] = 0.0  # a shorter episode

        def batch(mask=mask):
            return {"obs": torch.randn(E, T, D, generator=g), "actions": torch.randn(E, T, A, generator=g),
                    "mask": mask, "advantages": torch.randn(E, T, generator=g) * mask,
                    "logp": torch.randn(E, T, generator=g)}

        tasks.append(rl.PreparedTask((batch(),), batch()))
    moved = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in params.items()}  # θ after outer steps
    return params, moved, tasks


def dist(p, obs):
    mean = torch.tanh(obs @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]  # (E, T, A)
    return torch.cat([mean, p["log_std"].expand_as(mean)], -1)  # (E, T, 2A)


def log_prob(p, obs, actions):
    mean, log_std = dist(p, obs).chunk(2, -1)
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # (E, T)


KW = dict(inner_lr=0.3, discrete=False)


def test_query_kl_value_is_the_numpy_closed_form(setup):
    params, moved, tasks = setup
    p0 = {k: v.clone().requires_grad_() for k, v in params.items()}
    olds = rl.query_dists(log_prob, dist, p0, tasks, inner_lr=KW["inner_lr"])
    p1 = {k: v.clone().requires_grad_() for k, v in moved.items()}
    got = rl.query_kls(log_prob, dist, p1, tasks, olds, **KW)
    for i, task in enumerate(tasks):
        new = {}
        for who, p in (("old", p0), ("new", p1)):
            adapted, _ = rl.adapt_policy(log_prob, p, task.support, lr=KW["inner_lr"], gamma=1.0)
            new[who] = dist(adapted, task.query["obs"]).detach().numpy()
        m = task.query["mask"].numpy()
        want = (np_gaussian_kl(new["old"], new["new"]) * m).sum() / m.sum()
        assert float(got[i].detach()) == pytest.approx(want, rel=1e-12), i
        assert want > 1e-4  # θ moved: a KL well away from 0
    at_old = rl.query_kls(log_prob, dist, p0, tasks, olds, **KW)
    assert float(at_old.abs().max()) < 1e-14  # before any outer step the KL is 0


def hand_kl_objective(p: dict, tasks, olds, *, inner_lr: float) -> torch.Tensor:
    """Σ_tasks mean_t KL(π_old ‖ π_θ'(θ)), θ' = θ - α ∇θ(-mean(log π Â)) with create_graph, KL written out."""
    total = torch.zeros(())
    names = list(p)
    for task, old in zip(tasks, olds):
        s = task.support[0]
        inner = -(log_prob(p, s["obs"], s["actions"]) * s["advantages"] * s["mask"]).sum() / s["mask"].sum()
        grads = torch.autograd.grad(inner, [p[n] for n in names], create_graph=True)
        adapted = {n: p[n] - inner_lr * g for n, g in zip(names, grads)}
        mu_n, ls_n = dist(adapted, task.query["obs"]).chunk(2, -1)
        mu_o, ls_o = old.chunk(2, -1)
        var_o, var_n = torch.exp(2 * ls_o), torch.exp(2 * ls_n)
        kl = (0.5 * (var_o / var_n + (mu_n - mu_o) ** 2 / var_n - 1.0 + torch.log(var_n / var_o))).sum(-1)
        m = task.query["mask"]
        total = total + (kl * m).sum() / m.sum()
    return total


def test_query_kl_gradient_is_autograd_of_the_hand_written_formula(setup):
    params, moved, tasks = setup
    p0 = {k: v.clone().requires_grad_() for k, v in params.items()}
    olds = rl.query_dists(log_prob, dist, p0, tasks, inner_lr=KW["inner_lr"])
    p1 = {k: v.clone().requires_grad_() for k, v in moved.items()}
    got = torch.autograd.grad(rl.query_kls(log_prob, dist, p1, tasks, olds, **KW).sum(), list(p1.values()))
    p2 = {k: v.clone().requires_grad_() for k, v in moved.items()}
    want = torch.autograd.grad(hand_kl_objective(p2, tasks, olds, inner_lr=KW["inner_lr"]), list(p2.values()))
    for name, a, b in zip(p1, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)
    first = torch.autograd.grad(rl.query_kls(log_prob, dist, p1, tasks, olds, **KW, first_order=True).sum(),
                                list(p1.values()))
    assert max(float((a - b).abs().max()) for a, b in zip(got, first)) > 1e-6  # the second-order term matters


# --- the Learner (RLlib) -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(**meta) -> MAMLConfig:
    kw = dict(task="navigation-2d", backbone="mlp", width=8, meta_batch_size=2, episodes_per_task=2, outer_steps=3,
              dtype="float64")
    kw.update(meta)
    return (MAMLConfig().meta(**kw).env_runners(num_env_runners=0, num_envs_per_env_runner=2)
            .training(lr=0.01).debugging(seed=0))


def learner_and_results(cfg):
    """The local Learner of a built algo and two tasks' episodes sampled with its θ (the algo is returned to stop)."""
    algo = cfg.build_algo()
    runner = algo.env_runner_group.local_env_runner
    tasks = runner.env.unwrapped.envs[0].unwrapped.sample_tasks(2, seed=5)
    results = [runner.run_task(TaskJob(task=t, task_index=i, iteration=0, seed=7 + i, inner_steps=1,
                                       episodes_per_task=cfg.episodes_per_task)) for i, t in enumerate(tasks)]
    return algo, local_learner(algo.learner_group), results


def reference_update(learner, results, *, steps: int, coeff: float = 0.0):
    """Today's meta-update written out (Adam steps on the clipped surrogate, norm clip 1.0) on a copy of the
    Learner's net, plus coeff · ∇ of the hand-written query KL; returns (θ after each step, KL after each step);
    ``reference_update.last`` keeps θ before the first step, the surrogate at θ before each step and after the last,
    and Adam's state after each step."""
    cfg = learner.config
    net = copy.deepcopy(learner.policy.net)
    params = list(net.parameters())
    theta0 = [p.detach().clone() for p in params]
    optim = torch.optim.Adam(params, lr=cfg.lr)
    tasks = learner.prepare(results)

    def lp(p, o, a):
        return functional_log_prob(net, p, o, a)[0]

    def dist_fn(p, o):
        return torch.func.functional_call(net, p, (o, None), strict=False)[0]

    olds = rl.query_dists(lp, dist_fn, dict(net.named_parameters()), tasks, inner_lr=cfg.inner_lr)
    thetas, kls, losses, adams = [], [], [], []
    for step in range(steps + 1):  # the pass after the last step only measures the loss there
        optim.zero_grad(set_to_none=False)
        if coeff and step > 0:
            named = dict(net.named_parameters())
            kl = rl.query_kls(lp, dist_fn, named, tasks, olds, inner_lr=cfg.inner_lr, discrete=False)
            for p, g in zip(params, torch.autograd.grad(coeff * kl.sum() / len(tasks), list(named.values()))):
                p.grad.add_(g)
        loss, _ = meta_gradient_batched(lp, dict(net.named_parameters()), tasks, num_tasks_total=len(tasks),
                                        inner_lr=cfg.inner_lr, gamma=cfg.gamma, clip=cfg.clip_param)
        losses.append(loss)
        if step == steps:
            break
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optim.step()
        thetas.append([p.detach().clone() for p in params])
        adams.append([{k: v.clone() for k, v in optim.state[p].items()} for p in params])
        kl = rl.query_kls(lp, dist_fn, dict(net.named_parameters()), tasks, olds, inner_lr=cfg.inner_lr,
                          discrete=False)
        kls.append(float(kl.mean()))
    def loss_at(theta: list[torch.Tensor]) -> float:  # the surrogate at any θ (the Learner's meta-objective)
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
        return meta_gradient_batched(lp, dict(net.named_parameters()), tasks, num_tasks_total=len(tasks),
                                     inner_lr=cfg.inner_lr, gamma=cfg.gamma, clip=cfg.clip_param)[0]

    reference_update.last = {"theta0": theta0, "losses": losses, "adams": adams, "loss_at": loss_at}
    return thetas, kls


def run_case(cfg, **ref):
    algo, learner, results = learner_and_results(cfg)
    try:
        thetas, kls = reference_update(learner, results, **ref)
        metrics = learner.meta_update(results, num_tasks_total=len(results))
        optim = learner.get_optimizer()
        run_case.optim_state = [{k: v.clone() for k, v in optim.state[p].items()} for p in learner.policy.parameters()]
        return [p.detach().clone() for p in learner.policy.parameters()], metrics, thetas, kls
    finally:
        algo.stop()


@pytest.mark.timeout(300)
def test_coeff_zero_is_bit_identical_to_the_plain_outer_steps(ray_session):
    got, metrics, thetas, _ = run_case(config(), steps=3)
    for a, b in zip(got, thetas[-1]):
        assert torch.equal(a, b)
    assert metrics["outer_steps_run"] == 3 and "outer_kl" not in metrics


@pytest.mark.timeout(300)
def test_coeff_adds_the_kl_gradient_and_logs_the_kl(ray_session):
    got, metrics, thetas, kls = run_case(config(outer_kl_coeff=2.0), steps=3, coeff=2.0)
    for a, b in zip(got, thetas[-1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    _, _, plain, _ = run_case(config(), steps=3)
    assert max(float((a - b).abs().max()) for a, b in zip(got, plain[-1])) > 1e-6  # the KL term changed θ
    assert metrics["outer_kl"] == pytest.approx(kls[-1], rel=1e-9) and metrics["outer_steps_run"] == 3


@pytest.mark.timeout(300)
def test_target_kl_stops_after_the_step_that_exceeds_it(ray_session):
    _, _, _, kls = run_case(config(outer_steps=4), steps=4)
    assert kls[0] < kls[1], kls  # the case: KL grows from step 1 to step 2
    target = 0.5 * (kls[0] + kls[1])
    got, metrics, thetas, _ = run_case(config(outer_steps=4, outer_target_kl=target), steps=4)
    assert metrics["outer_steps_run"] == 2
    assert metrics["outer_kl"] == pytest.approx(kls[1], rel=1e-9) and metrics["outer_kl"] > target
    for a, b in zip(got, thetas[1]):  # θ after step 2: the step that crossed the target is kept
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_kl_with_trial_memory_is_refused_before_ray_starts():
    with pytest.raises(ValueError, match="outer_kl_coeff = 0.1.*memory='episode'"):
        config(backbone="gru", memory="trial", outer_kl_coeff=0.1).validate_meta()


@pytest.mark.timeout(300)
def test_two_learners_measure_the_kl_of_all_tasks(ray_session):
    """The KL is all-reduced (every Learner must stop at the same outer step): 2 Learners = 1 Learner."""

    def run(num_learners: int):
        cfg = (config(meta_batch_size=4, outer_steps=2, outer_kl_coeff=1.0, outer_target_kl=1e9)
               .learners(num_learners=num_learners, num_cpus_per_learner=0.5 if num_learners else 1))
        algo = cfg.build_algo()
        try:
            result = algo.train()
            weights = algo.learner_group.get_weights()["default_policy"]
        finally:
            algo.stop()
        return result["meta"], weights

    one, w_one = run(0)
    two, w_two = run(2)
    assert one["outer_kl"] > 1e-8 and one["outer_steps_run"] == two["outer_steps_run"] == 2
    assert two["outer_kl"] == pytest.approx(one["outer_kl"], rel=1e-9)
    for name, w in w_one.items():
        np.testing.assert_allclose(np.asarray(w_two[name]), np.asarray(w), rtol=1e-9, atol=1e-12, err_msg=name)


# --- outer_monotone: an outer step that makes the meta-objective worse is shortened or undone ----------------------
BIG_LR = 0.04  # on this case the surrogate gets worse at step 2 (-0.0277 -> -0.0269): steps of lr 0.04 overshoot


def worse_case():
    """The plain 4-step update at BIG_LR: (θ before each step, losses at them, Adam's state after each step, the
    first step that raised the loss, loss_at)."""
    _, _, thetas, _ = run_case(config(outer_steps=4).training(lr=BIG_LR), steps=4)
    last = reference_update.last
    losses = last["losses"]
    worse = next(k for k in range(1, 5) if losses[k] > losses[k - 1])  # step `worse` raised the loss
    assert worse >= 2, losses  # the case: at least one step is kept
    return [last["theta0"], *thetas], losses, last["adams"], worse, last["loss_at"]


@pytest.mark.timeout(300)
def test_monotone_without_backtracks_undoes_the_first_step_that_makes_it_worse(ray_session):
    thetas, losses, adams, worse, _ = worse_case()
    got, metrics, _, _ = run_case(config(outer_steps=4, outer_monotone=True, outer_backtracks=0)
                                  .training(lr=BIG_LR), steps=4)
    assert metrics["outer_step_kept"] == 0.0 and metrics["outer_steps_run"] == worse - 1
    assert metrics["outer_loss_last"] == pytest.approx(losses[worse - 1], rel=1e-12)
    for a, b in zip(got, thetas[worse - 1]):  # θ after the steps before the worse one
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    state = run_case.optim_state  # Adam's state is restored too: the next update starts where it should
    for p_state, want in zip(state, adams[worse - 2]):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(p_state[key], want[key], rtol=1e-12, atol=1e-14)


@pytest.mark.timeout(300)
def test_monotone_backtracks_to_the_first_shortened_step_that_is_not_worse(ray_session):
    thetas, losses, adams, worse, loss_at = worse_case()
    start, full = thetas[worse - 1], thetas[worse]
    tried = [[a + (b - a) / 2**j for a, b in zip(start, full)] for j in (1, 2, 3)]
    kept = next(j for j, theta in enumerate(tried, 1) if loss_at(theta) <= losses[worse - 1])
    got, metrics, _, _ = run_case(config(outer_steps=4, outer_monotone=True, outer_backtracks=3)
                                  .training(lr=BIG_LR), steps=4)
    assert metrics["outer_step_kept"] == 0.5**kept and metrics["outer_steps_run"] == worse
    assert metrics["outer_loss_last"] == pytest.approx(loss_at(tried[kept - 1]), rel=1e-12)
    for a, b in zip(got, tried[kept - 1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for p_state, want in zip(run_case.optim_state, adams[worse - 1]):  # the moments of the gradient at `start`
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(p_state[key], want[key], rtol=1e-12, atol=1e-14)


@pytest.mark.timeout(300)
def test_monotone_keeps_every_step_that_does_not_make_it_worse(ray_session):
    got, metrics, thetas, _ = run_case(config(outer_steps=3, outer_monotone=True), steps=3)
    losses = reference_update.last["losses"]
    assert all(b <= a for a, b in zip(losses, losses[1:])), losses  # the case: lr 0.01 improves at every step
    for a, b in zip(got, thetas[-1]):
        assert torch.equal(a, b)
    assert metrics["outer_step_kept"] == 1.0 and metrics["outer_steps_run"] == 3
    assert metrics["outer_loss_last"] == pytest.approx(losses[-1], rel=1e-12)  # measured after the last step
