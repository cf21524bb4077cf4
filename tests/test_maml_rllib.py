"""MAML on RLlib: oracles for the adapted parameters, the meta-gradient, sharding over Learners, fault tolerance.

One Ray session for the module (``ray_session``); every Algorithm is stopped by its test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
import torch
from conftest import init_ray_with_tests_on_path

from metarl import models
from metarl.policy_net import functional_log_prob
from metarl.rl import advantages, clipped_surrogate_loss, vpg_loss
from rllib_ext.algorithm import MAMLConfig
from rllib_ext.jobs import TaskJob, TaskResult
from rllib_ext.rllib_internals import local_learner
from rllib_ext.runner import MAMLEnvRunner


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()  # workers import the crashing subclass below from this file
    yield
    ray.shutdown()


def tiny(backbone="gru", task="navigation-2d", **meta) -> MAMLConfig:
    kw = dict(task=task, backbone=backbone, width=8, meta_batch_size=2, episodes_per_task=2, outer_steps=1)
    kw.update(meta)
    return (
        MAMLConfig()
        .meta(**kw)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .debugging(seed=0)
    )


def build(cfg):
    algo = cfg.build_algo()
    return algo, algo.env_runner_group.local_env_runner, local_learner(algo.learner_group)


def log_prob(net, params, obs, actions):
    return functional_log_prob(net, params, obs, actions)[0]


# --- the oracles ---------------------------------------------------------------------------------------------------


def reference_meta_gradient(net, result: TaskResult, *, inner_lr, gamma, clip, first_order):
    """Hand-written MAML gradient: θ_{k+1} = θ_k - α ∂L_inner/∂θ_k (create_graph), then ∂L_outer(θ_K)/∂θ."""
    theta = dict(net.named_parameters())
    names = list(theta)
    params = dict(theta)
    for batch in result.support:
        b = batch.tensors(torch.float64)
        adv = advantages(b, gamma=gamma)
        loss = vpg_loss(log_prob(net, params, b["obs"], b["actions"]), adv, b["mask"])
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order, allow_unused=True)
        params = {
            n: params[n] - inner_lr * (torch.zeros_like(params[n]) if g is None else (g.detach() if first_order else g))
            for n, g in zip(names, grads)
        }
    q = result.query.tensors(torch.float64)
    logp = log_prob(net, params, q["obs"], q["actions"])
    outer = clipped_surrogate_loss(logp, q["logp"], advantages(q, gamma=gamma), q["mask"], clip=clip)
    grads = torch.autograd.grad(outer, [theta[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(theta[n]) if g is None else g for n, g in zip(names, grads)}


def run_one_task(runner, cfg, seed=3) -> TaskResult:
    task = runner.env.unwrapped.envs[0].unwrapped.sample_tasks(1, seed=seed)[0]
    return runner.run_task(TaskJob(task=task, task_index=0, iteration=0, seed=seed, inner_steps=cfg.inner_steps,
                                   episodes_per_task=cfg.episodes_per_task, return_params=True))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backbone", ["mlp", "gru"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_runner_adapted_params_equal_learner_recomputation(backbone, inner_steps):
    cfg = tiny(backbone, inner_steps=inner_steps, dtype="float64")
    algo, runner, learner = build(cfg)
    try:
        res = run_one_task(runner, cfg)
        assert res.query.weights_id == f"0/{inner_steps}"
        assert [b.weights_id for b in res.support] == [f"0/{k}" for k in range(inner_steps)]
        net = learner.policy.net
        # runner and learner start from the same θ, and the runner's module still holds θ after adapting
        for (n, p), (_, q) in zip(net.named_parameters(), runner.module.net.named_parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
        from metarl.rl import adapt_policy

        adapted, _ = adapt_policy(
            lambda p, o, a: log_prob(net, p, o, a),
            dict(net.named_parameters()),
            [b.tensors(torch.float64) for b in res.support],
            lr=cfg.inner_lr,
            gamma=cfg.gamma,
            first_order=False,
        )
        assert len(res.adapted_params) == inner_steps
        for name, v in res.adapted_params[-1].items():
            torch.testing.assert_close(adapted[name].detach(), v, rtol=1e-10, atol=1e-10, msg=name)
            assert not torch.equal(v, dict(net.named_parameters())[name].detach()) or "bias" in name
    finally:
        algo.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backbone", ["mlp", "gru"])
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_hand_written_reference(backbone, inner_steps, first_order):
    cfg = tiny(backbone, inner_steps=inner_steps, dtype="float64", first_order=first_order)
    algo, runner, learner = build(cfg)
    try:
        res = run_one_task(runner, cfg)
        net = learner.policy.net
        ref = reference_meta_gradient(
            net, res, inner_lr=cfg.inner_lr, gamma=cfg.gamma, clip=cfg.clip_param, first_order=first_order
        )
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        _, dlogp = learner.meta_gradient(learner.prepare([res]), num_tasks_total=1)
        assert dlogp < 1e-8, "the Learner's θ' must reproduce the log-probs the runner sampled with"
        for name, p in net.named_parameters():
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-9, atol=1e-12, msg=name)
        assert all(float(g.abs().sum()) > 0 for g in ref.values()), "every parameter gets a meta-gradient"
    finally:
        algo.stop()


@pytest.mark.timeout(120)
def test_second_order_differs_from_first_order_and_matches_finite_differences():
    cfg = tiny("gru", dtype="float64")
    algo, runner, learner = build(cfg)
    try:
        res = run_one_task(runner, cfg)
        module = learner.policy.net
        g2 = reference_meta_gradient(module, res, inner_lr=0.1, gamma=cfg.gamma, clip=0.3, first_order=False)
        g1 = reference_meta_gradient(module, res, inner_lr=0.1, gamma=cfg.gamma, clip=0.3, first_order=True)
        diff = sum(float((g2[n] - g1[n]).abs().sum()) for n in g2)
        assert diff > 1e-6, "the second-order term must matter"
        # central finite differences of the meta-objective along a random direction
        theta = {n: p.detach().clone() for n, p in module.named_parameters()}
        v = {n: torch.randn_like(t, generator=torch.Generator().manual_seed(1).manual_seed(i)) for i, (n, t) in
             enumerate(theta.items())}

        def objective(eps):
            with torch.no_grad():
                for n, p in module.named_parameters():
                    p.copy_(theta[n] + eps * v[n])
            params = dict(module.named_parameters())
            b = res.support[0].tensors(torch.float64)
            loss = vpg_loss(log_prob(module, params, b["obs"], b["actions"]), advantages(b, gamma=cfg.gamma),
                            b["mask"])
            g = torch.autograd.grad(loss, list(params.values()), create_graph=False, allow_unused=True)
            adapted = {n: params[n].detach() - 0.1 * (gi if gi is not None else 0) for n, gi in zip(params, g)}
            q = res.query.tensors(torch.float64)
            with torch.no_grad():
                logp = log_prob(module, adapted, q["obs"], q["actions"])
                return float(clipped_surrogate_loss(logp, q["logp"], advantages(q, gamma=cfg.gamma), q["mask"], clip=0.3))

        eps = 1e-6
        fd = (objective(eps) - objective(-eps)) / (2 * eps)
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(theta[n])
        analytic = sum(float((g2[n] * v[n]).sum()) for n in g2)
        assert fd == pytest.approx(analytic, rel=1e-5, abs=1e-9)
    finally:
        algo.stop()


# --- the algorithm end to end --------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backbone", models.available())
def test_every_backbone_runs_a_maml_iteration_on_mujoco(backbone):
    """Local runner AND remote runners, HalfCheetahDir with a 10-step horizon: returns are finite, steps counted."""
    for n_runners in (0, 1):
        cfg = tiny(backbone, task="halfcheetah-dir", horizon=10).env_runners(
            num_env_runners=n_runners, num_cpus_per_env_runner=0.5
        )
        algo = cfg.build_algo()
        try:
            before = [p.detach().clone() for p in local_learner(algo.learner_group).policy.parameters()]
            r = algo.train()
            assert np.isfinite(r["adapt"]["return_step_0"]) and np.isfinite(r["adapt"]["return_step_1"])
            # 2 tasks x (2 support + 2 query episodes) x 10 steps
            assert r["env_steps"]["this_iter"] == 2 * 4 * 10
            after = list(local_learner(algo.learner_group).policy.parameters())
            assert any(not torch.equal(a, b) for a, b in zip(after, before)), "θ must move"
        finally:
            algo.stop()


# 2 Learners vs 1 (the all-reduce scale): tests/test_allreduce.py


class CrashOnceRunner(MAMLEnvRunner):
    """The first runner to get a task job dies (hard, like a lost node); exactly one crash per test (O_EXCL)."""

    def run_tasks(self, jobs):
        try:
            fd = os.open(self.config.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().run_tasks(jobs)
        os.write(fd, str(self.worker_index).encode())
        os.close(fd)
        os._exit(1)


@pytest.mark.timeout(300)
def test_killed_runner_tasks_are_rerun_not_dropped(tmp_path):
    marker = tmp_path / "crashed"
    cfg = (
        tiny("mlp", meta_batch_size=4)
        .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5, env_runner_cls=CrashOnceRunner)
        .fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=0.0)
    )
    cfg.crash_marker = str(marker)  # travels to the runners with the config
    algo = cfg.build_algo()
    try:
        r = algo.train()
        assert marker.exists(), "the runner must actually have crashed"
        assert r["env_steps"]["this_iter"] == 4 * 4 * 100, "all 4 tasks' episodes arrive"
        assert r["tasks"]["retried_lifetime"] >= 1
        r = algo.train()
        assert r["env_steps"]["this_iter"] == 4 * 4 * 100
    finally:
        algo.stop()


# --- bad configs fail before any actor starts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(inner_lr=0.0), r"inner_lr = 0.0"),
        (dict(inner_lr=-1.0), r"inner_lr = -1.0"),
        (dict(backbone="resnet"), r"backbone = 'resnet'.*gru"),
        (dict(task="cartpole"), r"task = 'cartpole'.*halfcheetah-vel"),
        (dict(episodes_per_task=3), r"episodes_per_task = 3 .*num_envs_per_env_runner = 2"),
        (dict(max_seq_len=50), r"max_seq_len = 50 .*horizon 100"),
        (dict(inner_steps=-1), r"inner_steps = -1"),
        (dict(meta_batch_size=3, _learners=2), r"meta_batch_size = 3 .*num_learners = 2"),
    ],
)
def test_bad_configs_name_field_and_value(change, match):
    change = dict(change)
    n_learners = change.pop("_learners", None)
    cfg = tiny(**change)
    if n_learners:
        cfg = cfg.learners(num_learners=n_learners)
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_unknown_meta_field_is_rejected():
    with pytest.raises(ValueError, match="inner_lrr"):
        MAMLConfig().meta(inner_lrr=0.1)


# --- the typed hand-off -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "per_learner, want",
    [
        ([{"logp_mismatch": 1e-7, "outer_loss": 0.5, "grad_norm": 2.0}],
         {"logp_mismatch": 1e-7, "outer_loss": 0.5, "grad_norm": 2.0}),
        ([{"logp_mismatch": 1e-9, "outer_loss": 0.5, "grad_norm": 2.0},
          {"logp_mismatch": 3e-7, "outer_loss": 0.7, "grad_norm": 2.0}],
         {"logp_mismatch": 3e-7, "outer_loss": 0.6, "grad_norm": 2.0}),
        ([{"logp_mismatch": 4e-7, "outer_loss_last": -1.0}, {"logp_mismatch": 2e-7, "outer_loss_last": 3.0},
          {"logp_mismatch": 0.0, "outer_loss_last": 1.0}],
         {"logp_mismatch": 4e-7, "outer_loss_last": 1.0}),
    ],
)
def test_learner_metrics_reduce_max_for_mismatch_mean_for_losses(per_learner, want):
    from rllib_ext.jobs import reduce_learner_metrics

    got = reduce_learner_metrics(per_learner)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k]), k


@pytest.mark.parametrize("field, value", [("inner_steps", -1), ("episodes_per_task", 0), ("inner_steps", 1.5)])
def test_task_job_rejects_bad_step_counts(field, value):
    kw = dict(task=None, task_index=0, iteration=0, seed=0, inner_steps=1, episodes_per_task=2)
    kw[field] = value
    with pytest.raises(ValueError, match=rf"TaskJob.{field} = {value!r} must be an integer"):
        TaskJob(**kw)
