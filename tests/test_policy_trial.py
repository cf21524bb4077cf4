"""The deployed policy with trial memory (``MetaPolicy.sample_trial`` / ``sample_episodes(carry=...)`` /
``adapt(carry=...)``) against the runner's trial (``MAMLEnvRunner.run_task`` on a ``memory="trial"`` config, float64):
the same θ, task and seed give the same episodes of every phase (the state and RL² inputs carried across episodes
and phases) and the same θ_K; ``adapt`` over consecutive phases equals ``metarl.trial.adapt_trial`` on the Learner's
preparation of the same phases (``prepare_trial_task``). No Ray: the runner is built in-process, as by
``metarl evaluate``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl import tasks
from metarl.sampler import TrialCarry
from metarl.trial import adapt_trial, copied, prepare_trial_task
from rllib_ext.config import MAMLConfig
from rllib_ext.jobs import TaskJob
from rllib_ext.policy import MetaPolicy
from rllib_ext.runner import MAMLEnvRunner

NUM_ENVS, EPISODES, HORIZON = 2, 6, 4


def config(task: str, memory: str, inner_steps: int) -> MAMLConfig:
    horizon = None if task == "bandit" else HORIZON
    return (MAMLConfig()
            .meta(task=task, backbone="gru", width=8, meta_batch_size=1, episodes_per_task=EPISODES, outer_steps=1,
                  memory=memory, dtype="float64", horizon=horizon, inner_steps=inner_steps, inner_lr=0.5)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=NUM_ENVS)
            .debugging(seed=0))


def runner_and_policy(cfg: MAMLConfig):
    runner = MAMLEnvRunner(config=cfg)
    policy = MetaPolicy(runner.module, inner_lr=cfg.inner_lr, gamma=cfg.gamma, memory=cfg.memory,
                        trial_returns=cfg.uses_trial_returns, inner_objective=cfg.inner_objective)
    return runner, policy


def policy_envs(cfg: MAMLConfig, task) -> list:
    envs = [tasks.make(cfg.task, horizon=cfg.horizon) for _ in range(NUM_ENVS)]
    for env in envs:
        env.unwrapped.task = task
    return envs


def assert_same_batches(got, want) -> None:
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        for name in ("obs", "actions", "rewards", "mask", "logp"):
            np.testing.assert_array_equal(getattr(g, name), getattr(w, name), err_msg=f"phase {k}: {name}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("task", "memory", "inner_steps"), [
    ("navigation-2d", "trial", 2),  # Gaussian actions, state carried across episodes and two inner steps
    ("bandit", "trial", 1),  # RL² inputs (previous action one-hot, reward, episode-start flag) across phases
    ("navigation-2d", "episode", 1),  # episode memory: the runner's run_task, every episode from the initial state
])
def test_sample_trial_equals_the_runners_trial(task, memory, inner_steps):
    cfg = config(task, memory, inner_steps)
    runner, policy = runner_and_policy(cfg)
    try:
        test_task = tasks.make(task).unwrapped.test_tasks(1, seed=3)[0]
        runner.env.unwrapped.call("set_task", test_task)
        want = runner.run_task(TaskJob(task=test_task, task_index=0, iteration=-1, seed=11, inner_steps=inner_steps,
                                       episodes_per_task=EPISODES, return_params=True))
        batches, carry = policy.sample_trial(policy_envs(cfg, test_task), EPISODES, inner_steps=inner_steps, seed=11)
        assert_same_batches(batches, want.batches)
        for name, v in want.adapted_params[-1].items():  # the policy keeps θ_K, the runner's
            torch.testing.assert_close(policy.params[name], v, rtol=0, atol=0, msg=name)
        assert (carry is None) == (memory == "episode")
        if memory == "trial":  # the carry at the end is the one the query phase left: replay it from the start
            theta = {k: v.detach() for k, v in policy.net.named_parameters()}
            end = carry_after(policy.net, [theta, *want.adapted_params], want.batches)
            for key, v in end.state.items():
                torch.testing.assert_close(carry.state[key], v, rtol=1e-10, atol=1e-12, msg=key)
    finally:
        runner.stop()


def carry_after(net, thetas, batches) -> TrialCarry:
    """The trial's carry after ``batches`` (phase k with ``thetas[k]``), replayed from a new trial."""
    from metarl.trial import phase_log_prob

    carry = None
    for theta, batch in zip(thetas, batches):
        with torch.no_grad():
            _, carry = phase_log_prob(net, theta, batch.tensors(torch.float64), NUM_ENVS, carry)
    return carry


@pytest.mark.timeout(120)
def test_adapt_over_phases_equals_adapt_trial_on_the_learners_preparation():
    cfg = config("navigation-2d", "trial", 2)
    runner, policy = runner_and_policy(cfg)
    try:
        test_task = tasks.make("navigation-2d").unwrapped.test_tasks(1, seed=4)[0]
        runner.env.unwrapped.call("set_task", test_task)
        res = runner.run_task(TaskJob(task=test_task, task_index=0, iteration=-1, seed=5, inner_steps=2,
                                      episodes_per_task=EPISODES, return_params=True))
        net = policy.net
        prepared = prepare_trial_task(res.support, res.query, NUM_ENVS, dtype=torch.float64, device="cpu",
                                      gamma=cfg.gamma, normalize_advantages=cfg.normalize_advantages,
                                      trial_returns=cfg.uses_trial_returns)
        theta = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
        want, want_carry, want_losses = adapt_trial(net, theta, prepared.support, NUM_ENVS, lr=cfg.inner_lr,
                                                    first_order=True)
        losses = policy.adapt(list(res.support), num_envs=NUM_ENVS)  # a new trial: its 2 phases, one step each
        assert losses == pytest.approx(want_losses, rel=1e-12)
        for name, v in want.items():
            torch.testing.assert_close(policy.params[name], v.detach(), rtol=1e-12, atol=1e-12, msg=name)
        # ... and the runner's θ_2 (its inner steps start each phase from the carry it sampled with)
        for name, v in res.adapted_params[-1].items():
            torch.testing.assert_close(policy.params[name], v, rtol=1e-10, atol=1e-12, msg=name)

        # phase 1 alone, from the carry phase 0 left: the same θ_2 from θ_1
        policy.reset()
        policy.adapt(res.support[0], num_envs=NUM_ENVS)
        after_phase0 = carry_after(net, [{k: v.detach() for k, v in net.named_parameters()}], res.support[:1])
        policy.adapt(res.support[1], carry=copied(after_phase0))  # sub-envs read from the carry's rows
        for name, v in want.items():
            torch.testing.assert_close(policy.params[name], v.detach(), rtol=1e-10, atol=1e-12, msg=name)
        # the carry matters: from a fresh carry, θ_2 differs
        policy.reset()
        policy.adapt(res.support[0], num_envs=NUM_ENVS)
        policy.adapt(res.support[1], carry=TrialCarry(), num_envs=NUM_ENVS)
        assert max(float((policy.params[n] - v.detach()).abs().max()) for n, v in want.items()) > 1e-6
        with pytest.raises(ValueError, match="one batch per phase"):
            policy.adapt(res.support[0], steps=2)
        with pytest.raises(ValueError, match="2 episode batches given but steps = 1"):
            policy.adapt(list(res.support), steps=1)
    finally:
        runner.stop()

