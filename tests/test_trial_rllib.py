"""Trial memory through RLlib (``MAMLConfig.meta(memory="trial")``): the runner's trial against the Learner's.

- θ_K from the runner equals θ_K the Learner recomputes over the whole trial; the Learner's recomputed query
  log-probs equal the sampled ones; its meta-gradient equals the hand-written reference of
  tests/test_trial_meta_grad.py (gru, lru; 1 and 2 inner steps; first and second order).
- The state IS reset when a task job starts (a second job on the same runner replays from the initial state) and is
  NOT reset at an episode boundary inside the trial.
- RL² (inner_steps=0) and the MLP ablation run a training iteration on the bandit; bad field combinations are named.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from conftest import init_ray_with_tests_on_path
from test_trial_meta_grad import reference_meta_gradient
from test_trial_sampler import replay_logp

from metarl.trial import adapt_trial
from rllib_ext.algorithm import MAMLConfig
from rllib_ext.jobs import TaskJob
from rllib_ext.rllib_internals import local_learner


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()
    yield
    ray.shutdown()


def tiny(backbone="gru", task="navigation-2d", **meta) -> MAMLConfig:
    kw = dict(task=task, backbone=backbone, width=8, meta_batch_size=2, episodes_per_task=4, outer_steps=1,
              memory="trial", dtype="float64", horizon=5)
    kw.update(meta)
    return (MAMLConfig().meta(**kw).env_runners(num_env_runners=0, num_envs_per_env_runner=2).debugging(seed=0))


def build(cfg):
    algo = cfg.build_algo()
    return algo, algo.env_runner_group.local_env_runner, local_learner(algo.learner_group)


def job(runner, cfg, seed=3):
    task = runner.env.unwrapped.envs[0].unwrapped.sample_tasks(1, seed=seed)[0]
    return runner.run_task(TaskJob(task=task, task_index=0, iteration=0, seed=seed, inner_steps=cfg.inner_steps,
                                   episodes_per_task=cfg.episodes_per_task, return_params=True))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backbone", ["gru", "lru"])
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_runner_and_learner_agree_and_meta_gradient_equals_reference(backbone, inner_steps, first_order):
    cfg = tiny(backbone, inner_steps=inner_steps, first_order=first_order)
    algo, runner, learner = build(cfg)
    try:
        res = job(runner, cfg)
        assert [b.weights_id for b in res.batches] == [f"0/{k}" for k in range(inner_steps + 1)]
        net = learner.policy.net
        assert net.trial_inputs and runner.module.net.trial_inputs
        tasks = learner.prepare([res])
        adapted, _, _ = adapt_trial(net, dict(net.named_parameters()), tasks[0].support, 2, lr=cfg.inner_lr,
                                    first_order=False)
        for name, v in res.adapted_params[-1].items():
            torch.testing.assert_close(adapted[name].detach(), v, rtol=1e-10, atol=1e-10, msg=name)
        phases = [*tasks[0].support, tasks[0].query]
        ref, _ = reference_meta_gradient(net, phases, 2, first_order=first_order, lr=cfg.inner_lr, clip=cfg.clip_param)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        _, dlogp = learner.meta_gradient(tasks, num_tasks_total=1)
        assert dlogp < 1e-10, "the Learner's trial replay must reproduce the sampled log-probs"
        for name, p in net.named_parameters():
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-9, atol=1e-12, msg=name)
    finally:
        algo.stop()


@pytest.mark.timeout(120)
def test_state_reset_at_a_new_task_job_not_at_an_episode_boundary():
    cfg = tiny("gru", inner_steps=0)
    algo, runner, _ = build(cfg)
    try:
        job(runner, cfg, seed=3)  # a previous job leaves its state behind on this runner
        res = job(runner, cfg, seed=4)
        net = runner.module.net
        phases = [(dict(net.named_parameters()), res.query)]
        for recorded, replayed in replay_logp(net, phases, 2, carry_across=True):  # from the initial state
            np.testing.assert_allclose(recorded, replayed, rtol=1e-10, atol=1e-10)
        reset = replay_logp(net, phases, 2, carry_across=False)
        assert max(np.abs(a - b).max() for a, b in reset) > 1e-6, "the state must run on across episodes"
    finally:
        algo.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("backbone", "inner_steps"), [("gru", 0), ("mlp", 0), ("lru", 1)])
def test_rl2_and_trial_memory_train_an_iteration_on_the_bandit(backbone, inner_steps):
    cfg = tiny(backbone, task="bandit", inner_steps=inner_steps, dtype="float32", horizon=None)
    algo = cfg.build_algo()
    try:
        result = algo.train()
        flat = str(result)
        assert "adapt" in flat
    finally:
        algo.stop()


@pytest.mark.parametrize(("change", "match"), [
    (dict(memory="trials"), "memory"),
    (dict(memory="episode", trial_inputs=True), "trial_inputs = True needs memory='trial'"),
    (dict(memory="episode", trial_returns=True), "trial_returns = True needs memory='trial'"),
])
def test_bad_memory_fields_are_named(change, match):
    with pytest.raises(ValueError, match=match):
        tiny(**change).validate()


def test_rl2_method_in_the_sweep_grid_is_trial_memory_without_inner_step():
    from ray.tune.search.variant_generator import generate_variants

    from tune_configs.baselines import SIZES, param_space, with_size

    size = with_size(SIZES["smoke"], iterations=2)
    widths = {"bandit": {"gru": {"width": 8, "backbone_params": 0}}}
    space = param_space(size, backbones=["gru"], task_names=["bandit"], seeds=1, methods=["maml", "multitask", "rl2"],
                        widths=widths)
    resolved = {cfg["method"]: cfg for _, cfg in generate_variants(space)}
    got = {m: (cfg["inner_steps"], cfg["memory"], cfg["eval_inner_lr"]) for m, cfg in resolved.items()}
    assert got == {"maml": (size.inner_steps, "episode", None), "multitask": (0, "episode", None),
                   "rl2": (0, "trial", 0.0)}
    for cfg in resolved.values():  # the trial config validates (memory, inner_steps and fields together)
        MAMLConfig().update_from_dict({k: v for k, v in cfg.items() if k != "method"}).validate_meta(
            local_learner_here=False)


@pytest.mark.parametrize("backbone", ["gru", "mlp"])
def test_meta_policy_act_carries_rl2_inputs_like_the_sampler(backbone):
    """A deployed RL² policy acting step by step (greedy) on a trial of bandit episodes ends in the state, and takes
    the actions, the sampler's trial memory has for the same episodes."""
    import types

    from test_trial_sampler import make_envs, make_net

    from metarl.sampler import TrialCarry, sample_episodes
    from rllib_ext.policy import PREV_ACTION, MetaPolicy

    envs = make_envs("bandit")[:1]
    net = make_net(envs, backbone, trial_inputs=True)
    carry = TrialCarry()
    batch = sample_episodes(envs, net, None, num_episodes=6, seed=0, explore=False, carry=carry)
    policy = MetaPolicy(types.SimpleNamespace(net=net), inner_lr=0.1, gamma=0.9)
    env, state, reward, actions = envs[0], None, None, []
    for _ in range(6):
        obs, _ = env.reset()
        action, state = policy.act(obs, state, explore=False, reward=reward, episode_start=True)
        _, reward, *_ = env.step(action)
        actions.append(int(action))
    assert actions == batch.actions[:, 0].tolist()
    torch.testing.assert_close(state[PREV_ACTION], carry.prev_action, rtol=0, atol=0)
    for key, value in carry.state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-10, atol=1e-10)
    # the next step's input would hold the last reward: the sampler's carry has it too
    assert float(carry.prev_reward[0]) == reward
    with pytest.raises(ValueError, match="episode_start"):
        policy.act(obs, None)


@pytest.mark.parametrize(("field", "old", "new"), [("memory", "episode", "trial"), ("trial_inputs", None, False)])
def test_resume_refuses_to_change_memory_structure(field, old, new):
    import argparse

    from metarl.apps import run_folder

    before = run_folder.provenance_config(tiny(memory="episode").meta(**{field: old}))
    after = run_folder.provenance_config(tiny(memory="episode").meta(**{field: new}))
    with pytest.raises(ValueError, match=f"different model/task.*{field}"):
        run_folder._check_structure(argparse.Namespace(out="runs/x"), before, after, where="results.json")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("memory", ["trial", "episode"])
def test_a_job_with_inner_lr_zero_keeps_theta_and_the_trial_runs_on(memory):
    """``TaskJob.inner_lr = 0`` (held-out RL²: ``eval_inner_lr = 0``): θ_1 is θ exactly, so the query phase is the
    same policy; with trial memory it continues the trial from the carried state (its episodes differ from a new
    trial's); ``inner_lr = None`` takes the config's α (θ_1 moves)."""
    cfg = tiny(memory=memory, inner_steps=1)
    algo, runner, _ = build(cfg)
    try:
        task = runner.env.unwrapped.envs[0].unwrapped.sample_tasks(1, seed=3)[0]
        theta = {k: v.detach().clone() for k, v in runner.module.net.named_parameters()}

        def run(lr):
            return runner.run_task(TaskJob(task=task, task_index=0, iteration=0, seed=3, inner_steps=1,
                                           episodes_per_task=4, return_params=True, inner_lr=lr))

        kept, moved = run(0.0), run(None)
        for k, v in theta.items():
            assert torch.equal(kept.adapted_params[0][k], v)
        assert any(not torch.equal(moved.adapted_params[0][k], v) for k, v in theta.items())
        assert np.array_equal(kept.support[0].obs, moved.support[0].obs)  # the same support phase
    finally:
        algo.stop()


def test_a_job_refuses_a_negative_or_infinite_inner_lr():
    for lr in (-0.1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match=r"TaskJob.inner_lr = .* must be a finite number >= 0"):
            TaskJob(task=None, task_index=0, iteration=0, seed=0, inner_steps=1, episodes_per_task=2, inner_lr=lr)
