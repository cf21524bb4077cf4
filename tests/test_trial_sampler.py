"""Trial memory in the sampler (``metarl.sampler.TrialCarry``): the recurrent state runs on across episodes and
across calls with the same carry (the phases of one task), advancing only on recorded steps.

Oracle: for every env, its recorded steps, all episodes of all phases in order, replayed one step at a time from
the initial state (a plain loop over ``net``, no sampler) give the log-probs the sampler recorded (float64, 1e-10),
with the parameters switching at the phase boundary. Sub-envs end episodes at different iterations (one ends early),
so the reset iteration and idle envs are exercised; the bandit resets every other iteration.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarl.tasks as T
from metarl.policy_net import PolicyNet
from metarl.sampler import TrialCarry, sample_episodes


class EndsEarly(gym.Wrapper):
    """Terminates every episode after ``steps`` steps (shorter than the TimeLimit's horizon)."""

    def __init__(self, env, steps):
        super().__init__(env)
        self.steps, self.t = steps, 0

    def reset(self, **kw):
        self.t = 0
        return self.env.reset(**kw)

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.t += 1
        return obs, r, term or self.t >= self.steps, trunc, info


def make_envs(name):
    if name == "bandit":
        envs = [T.make("bandit", task_seed=0) for _ in range(2)]
    else:
        envs = [T.make("navigation-2d", horizon=4, task_seed=0), EndsEarly(T.make("navigation-2d", horizon=4), 2),
                T.make("navigation-2d", horizon=4, task_seed=0)]
    for env in envs:
        env.unwrapped.task = env.unwrapped.test_tasks(1)[0]
    return envs


def make_net(envs, backbone, trial_inputs=False):
    torch.manual_seed(0)
    net = PolicyNet.for_spaces(envs[0].observation_space, envs[0].action_space, backbone=backbone, width=8,
                               trial_inputs=trial_inputs)
    return net.double()


def shifted(net, scale):
    """Other parameters (the next phase's θ_1 stand-in)."""
    return {n: p.detach() + scale * torch.randn_like(p) for n, p in net.named_parameters()}


def replay_logp(net, phases, n, carry_across: bool):
    """Per env: its real steps of every phase in order, one step at a time, from the initial state (or, with
    ``carry_across=False``, from the initial state at every episode) -> list of log-probs per (phase, episode)."""
    out = []
    for i in range(n):
        state = net.initial_state(1)
        prev_a, prev_r = torch.zeros(1, net.action_feature_dim, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        for params, batch in phases:
            quota = batch.num_episodes // n
            for e in range(i * quota, (i + 1) * quota):
                if not carry_across:
                    state = net.initial_state(1)
                steps = int(batch.mask[e].sum())
                logps = []
                for t in range(steps):
                    obs = torch.as_tensor(batch.obs[e, t:t + 1])
                    action = torch.as_tensor(batch.actions[e, t:t + 1])
                    if net.trial_inputs:  # RL² inputs by hand: previous real step's action and reward, flag at t = 0
                        obs = torch.cat([obs, prev_a, prev_r[:, None], torch.full((1, 1), float(t == 0))], -1)
                        prev_a = net.action_features(action, torch.float64)
                        prev_r = torch.as_tensor(batch.rewards[e, t:t + 1])
                    y, state = torch.func.functional_call(net, params, (obs, state))
                    logps.append(net.dist_log_prob(y, action))
                out.append((batch.logp[e, :steps], torch.cat(logps).detach().numpy()))
    return out


def sample_trial(envs, net, carry, params_per_phase, episodes):
    return [(p, sample_episodes(envs, net, p, num_episodes=episodes, seed=11 + k, carry=carry))
            for k, p in enumerate(params_per_phase)]


@pytest.mark.parametrize(("backbone", "trial_inputs"), [("gru", False), ("lru", False), ("gru", True), ("lru", True)])
@pytest.mark.parametrize("name", ["navigation-2d", "bandit"])
def test_state_runs_across_episodes_and_phases_on_recorded_steps_only(name, backbone, trial_inputs):
    envs = make_envs(name)
    net = make_net(envs, backbone, trial_inputs)
    n = len(envs)
    params = [dict(net.named_parameters()), shifted(net, 0.3)]
    phases = sample_trial(envs, net, TrialCarry(), params, episodes=3 * n)
    lengths = phases[0][1].mask.sum(1)
    assert name == "bandit" or len(set(lengths.tolist())) > 1, "sub-envs must end episodes at different iterations"
    pairs = replay_logp(net, phases, n, carry_across=True)
    for recorded, replayed in pairs:
        np.testing.assert_allclose(recorded, replayed, rtol=1e-10, atol=1e-10)
    # the same replay with the state reset at every episode start disagrees: the check sees a reset state
    reset = replay_logp(net, phases, n, carry_across=False)
    assert max(np.abs(a - b).max() for a, b in reset) > 1e-6


@pytest.mark.parametrize("backbone", ["gru", "lru"])
def test_a_fresh_carry_starts_from_the_initial_state_and_episode_memory_is_unchanged(backbone):
    envs = make_envs("navigation-2d")
    net = make_net(envs, backbone)
    n = len(envs)
    theta = dict(net.named_parameters())
    sample_trial(envs, net, carry := TrialCarry(), [theta], episodes=2 * n)  # a previous task job on this runner
    assert carry.state and all(v.abs().sum() > 0 for v in carry.state.values())
    fresh = sample_trial(envs, net, TrialCarry(), [theta], episodes=2 * n)  # a new job: a new carry
    for recorded, replayed in replay_logp(net, fresh, n, carry_across=True):
        np.testing.assert_allclose(recorded, replayed, rtol=1e-10, atol=1e-10)
    episode = [(theta, sample_episodes(envs, net, theta, num_episodes=2 * n, seed=11))]  # no carry: episode memory
    for recorded, replayed in replay_logp(net, episode, n, carry_across=False):
        np.testing.assert_allclose(recorded, replayed, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["navigation-2d", "bandit"])
def test_mlp_with_trial_inputs_sees_previous_action_and_reward(name):
    """The ablation: no recurrent state, only RL² inputs carried across episodes and phases."""
    envs = make_envs(name)
    net = make_net(envs, "mlp", trial_inputs=True)
    n = len(envs)
    phases = sample_trial(envs, net, TrialCarry(), [dict(net.named_parameters()), shifted(net, 0.3)], episodes=2 * n)
    for recorded, replayed in replay_logp(net, phases, n, carry_across=True):
        np.testing.assert_allclose(recorded, replayed, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="trial_inputs needs trial memory"):
        sample_episodes(envs, net, None, num_episodes=n, seed=0)
