"""The lean sampler (``MAMLEnvRunner.sample_episodes``) against RLlib's stock pipeline, and its episode boundaries.

Oracles:
- RLlib's stock ``SingleAgentEnvRunner`` (default ConnectorV2 pipelines) with the same weights, the same env reset
  seeds and its global torch RNG seeded like our generator must produce the same episodes: observations,
  actions, rewards, log-probs, action-distribution inputs and (recurrent) states, for a stateless and a recurrent
  backbone, with fixed-length (HalfCheetah) and variable-length (Navigation2D ending at the goal) episodes.
  Observations and actions are bit-equal; rewards and log-probs agree to float32 rounding.
  Config for the stock runner: ``clip_actions=True, normalize_actions=False`` (our sampler sends ``clip(a)`` to
  the env and records the unclipped ``a``, which is what RLlib does with those settings).
- Recurrent state at episode boundaries: every episode's log-probs recomputed from the initial state over the
  whole episode (``module.log_prob``) equal the log-probs recorded while sampling, in a batch where sub-envs reset
  at different iterations; the same recomputation continuing from the previous episode's final state differs
  (so the check would catch a state carried across a reset).
- Success per episode: for a tiny env that declares ``reports_success`` and logs its own infos, the batch's
  ``success`` equals a hand count over those infos (and the iteration's ``adapt/success_step_k`` their means).

Everything runs in-process (no ``ray.init``): EnvRunners built directly from the config.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from metarl.policy_net import PolicyNet
from metarl.sampler import derive_seed, sample_episodes
from rllib_ext.algorithm import MAMLConfig
from rllib_ext.jobs import TaskResult, iteration_metrics
from rllib_ext.runner import MAMLEnvRunner

NAV_GOAL = dict(terminate_at_goal=True, goal_tolerance=0.25)


def config(*, task: str, backbone: str, num_envs: int, episodes: int, task_options: dict, horizon: int = 25,
           seed: int = 7):
    cfg = (
        MAMLConfig()
        .meta(task=task, backbone=backbone, width=16, episodes_per_task=episodes, task_options=task_options,
              horizon=horizon)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
        .environment(clip_actions=True, normalize_actions=False)
        .debugging(seed=seed)
    )
    cfg.validate()
    return cfg


def episode_lengths(batch) -> np.ndarray:
    return batch.mask.sum(1).astype(int)


def stock_episodes(cfg, weights, *, steps: int, torch_seed: int) -> list[dict]:
    """Episodes of RLlib's stock runner as dicts of numpy arrays (obs without the final observation)."""
    stock = SingleAgentEnvRunner(config=cfg)
    try:
        stock.module.set_state(weights)
        with torch.random.fork_rng():
            torch.manual_seed(torch_seed)
            episodes = stock.sample(num_timesteps=steps, explore=True)
    finally:
        stock.stop()
    out = []
    for e in episodes:
        if not e.is_done:  # the unfinished tail of the stock run (it does not stop sub-envs at a quota)
            continue
        d = {
            "obs": np.asarray(e.get_observations())[:-1],
            "actions": np.asarray(e.get_actions()),
            "rewards": np.asarray(e.get_rewards()),
            "logp": np.asarray(e.get_extra_model_outputs(Columns.ACTION_LOGP)),
            "dist_inputs": np.asarray(e.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS)),
        }
        if Columns.STATE_OUT in e.extra_model_outputs:
            d["state_out"] = np.asarray(e.get_extra_model_outputs(Columns.STATE_OUT)["h"])
        out.append(d)
    return out


@torch.no_grad()
def replay(module, obs: torch.Tensor, state=None):
    """Step the module's net over one episode's obs (T, D) from ``state`` (None: initial) -> (dist inputs, states)."""
    ys, hs = [], []
    for t in range(obs.shape[0]):
        y, state = module.net(obs[t : t + 1], state)
        ys.append(y[0])
        hs.append(state["h"][0] if state else torch.zeros(0))
    return torch.stack(ys), torch.stack(hs), state


CASES = [  # (task, task options, horizon, backbone, sub-envs, episodes): fixed and variable episode lengths
    ("halfcheetah-vel", {}, 12, "mlp", 2, 4),
    ("halfcheetah-vel", {}, 12, "ssm", 2, 4),
    ("navigation-2d", NAV_GOAL, 25, "gru", 3, 9),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("task", "options", "horizon", "backbone", "num_envs", "episodes"), CASES)
def test_same_episodes_as_the_stock_rllib_pipeline(task, options, horizon, backbone, num_envs, episodes):
    cfg = config(task=task, backbone=backbone, num_envs=num_envs, episodes=episodes, task_options=options,
                 horizon=horizon)
    ours = MAMLEnvRunner(config=cfg)
    try:
        seed = 11
        batch = ours.sample_episodes(
            episodes, seed=seed, env_seeds=[cfg.seed + i for i in range(num_envs)]  # RLlib's: config.seed + i
        )
        module = ours.module
        weights = module.get_state()
    finally:
        ours.stop()
    stock = stock_episodes(cfg, weights, steps=num_envs * episodes * (horizon + 1), torch_seed=derive_seed(seed, 1))
    lengths = episode_lengths(batch)
    if task == "navigation-2d":
        assert len(set(lengths)) > 1, "precondition: episodes of different lengths (sub-envs reset mid-batch)"
    used = set()
    for row, length in enumerate(lengths):
        actions = batch.actions[row, :length]
        match = [j for j, s in enumerate(stock) if j not in used and np.array_equal(s["actions"], actions)]
        assert match, f"episode {row} (length {length}) of ours is not among the stock runner's episodes"
        s = stock[match[0]]
        used.add(match[0])
        # bit-equal: same noise, same float32 forward, same physics; rewards are stored in float32 by us and
        # log-probs are computed from ε here and from (a - μ)/σ by RLlib, hence float32 rounding there
        np.testing.assert_array_equal(batch.obs[row, :length], s["obs"].astype(batch.obs.dtype))
        np.testing.assert_allclose(batch.rewards[row, :length], s["rewards"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batch.logp[row, :length], s["logp"], rtol=1e-5, atol=1e-5)
        assert (batch.mask[row, length:] == 0).all() and (batch.obs[row, length:] == 0).all()
        # the states the stock pipeline acted with = replaying our episode from the initial state
        y, h, _ = replay(module, torch.as_tensor(batch.obs[row, :length]))
        np.testing.assert_allclose(y.numpy(), s["dist_inputs"], rtol=1e-5, atol=1e-6)
        if "state_out" in s:
            np.testing.assert_allclose(h.numpy(), s["state_out"], rtol=1e-5, atol=1e-6)
    assert len(used) == episodes


@pytest.mark.timeout(60)
def test_a_sub_env_that_resets_mid_batch_starts_from_the_initial_state():
    num_envs, quota = 3, 4
    cfg = config(task="navigation-2d", backbone="gru", num_envs=num_envs, episodes=num_envs * quota,
                 task_options=NAV_GOAL)
    runner = MAMLEnvRunner(config=cfg)
    try:
        batch = runner.sample_episodes(num_envs * quota, seed=5)
        module = runner.module
        lengths = episode_lengths(batch).reshape(num_envs, quota)
        # precondition: sub-envs end episodes at different iterations, so some reset while others continue
        ends = [set(np.cumsum(lengths[i] + 1)) for i in range(num_envs)]  # +1: the reset iteration
        assert any(ends[i] != ends[j] for i in range(num_envs) for j in range(i)), lengths
        obs, actions = torch.as_tensor(batch.obs), torch.as_tensor(batch.actions)
        with torch.no_grad():
            fresh = module.net.dist_log_prob(module.net(obs)[0], actions)  # (E, T), each from the initial state
        mask = torch.as_tensor(batch.mask).bool()
        torch.testing.assert_close(fresh[mask], torch.as_tensor(batch.logp)[mask], rtol=1e-5, atol=1e-5)
        # power of the check: continuing episode e from episode e-1's final state gives other log-probs
        worst = 0.0
        for i in range(num_envs):
            state = None
            for e in range(quota):
                row, length = i * quota + e, lengths[i, e]
                y, _, end_state = replay(module, obs[row, :length], state)
                if e > 0:
                    mean, log_std = y.chunk(2, -1)
                    z = (actions[row, :length] - mean) * torch.exp(-log_std)
                    carried = (-0.5 * z * z - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
                    worst = max(worst, float((carried - torch.as_tensor(batch.logp[row, :length])).abs().max()))
                state = end_state
        assert worst > 1e-3
    finally:
        runner.stop()


@pytest.mark.timeout(60)
def test_episodes_depend_on_the_job_seed_only():
    kw = dict(task="navigation-2d", backbone="gru", num_envs=2, episodes=4, task_options=NAV_GOAL)
    a, b = MAMLEnvRunner(config=config(**kw, seed=1)), MAMLEnvRunner(config=config(**kw, seed=2))
    try:
        b.module.set_state(a.module.get_state())
        x, y, z = a.sample_episodes(4, seed=3), b.sample_episodes(4, seed=3), a.sample_episodes(4, seed=4)
        for f in ("obs", "actions", "rewards", "mask", "logp"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
        assert not np.array_equal(x.actions, z.actions)
        with pytest.raises(ValueError, match="multiple of num_envs_per_env_runner"):
            a.sample_episodes(3, seed=0)
        with pytest.raises(ValueError, match="env_seeds has 1 seeds"):
            a.sample_episodes(4, seed=0, env_seeds=[0])
    finally:
        a.stop()
        b.stop()


# --- success per episode (envs that report info["success"]) ---------------------------------------------------------


class CoinEnv(gym.Env):
    """A 1-D env whose ``info["success"]`` is a coin flip at each step (p = 0.05), logged by the env itself; episodes
    end early (terminated) with probability 0.1 per step, so they have different lengths."""

    reports_success = True
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self):
        self.infos: list[list[dict]] = []  # per episode, the infos of its steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.infos.append([])
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        info = {"success": bool(self.np_random.random() < 0.05)}
        self.infos[-1].append(info)
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return obs, float(action[0]), bool(self.np_random.random() < 0.1), False, info


class SilentCoinEnv(CoinEnv):
    reports_success = False


for _cls in (CoinEnv, SilentCoinEnv):
    if f"test/{_cls.__name__}-v0" not in gym.registry:
        gym.register(f"test/{_cls.__name__}-v0", entry_point=_cls, max_episode_steps=12)


def test_success_per_episode_matches_a_hand_count_of_the_infos():
    num_envs, quota = 3, 5
    envs = [gym.make("test/CoinEnv-v0") for _ in range(num_envs)]
    net = PolicyNet.for_spaces(envs[0].observation_space, envs[0].action_space, backbone="gru", width=8)
    batches, hands = [], []
    for seed in (4, 6):  # two runs on the same envs: their infos append (one list per episode)
        batches.append(sample_episodes(envs, net, None, num_episodes=num_envs * quota, seed=seed))
        eps = [env.unwrapped.infos[-quota:] for env in envs]
        hands.append(np.array([[float(any(i["success"] for i in ep)) for ep in env_eps] for env_eps in eps]))
        np.testing.assert_array_equal(batches[-1].success, hands[-1].reshape(-1))  # row i * quota + e
        lengths = np.array([[len(ep) for ep in env_eps] for env_eps in eps])
        np.testing.assert_array_equal(episode_lengths(batches[-1]), lengths.reshape(-1))
    assert all(len(env.unwrapped.infos) == 2 * quota for env in envs), "every reset started a recorded episode"
    assert 0 < hands[0].sum() < hands[0].size, "precondition: some episodes succeed, some do not"
    assert hands[0].mean() != hands[1].mean(), "precondition: the two steps differ"
    # the iteration's metric: mean success with θ_k over tasks
    results = [TaskResult(task_index=j, task=np.zeros(1), support=(batches[0],), query=batches[1],
                          inner_losses=(0.0,), time_sample_s=0.0, time_adapt_s=0.0, runner=0) for j in range(2)]
    metrics = iteration_metrics(results)
    assert metrics["adapt/success_step_0"] == pytest.approx(hands[0].mean())
    assert metrics["adapt/success_step_1"] == pytest.approx(hands[1].mean())
    silent = sample_episodes([gym.make("test/SilentCoinEnv-v0")], net, None, num_episodes=2, seed=4)
    assert silent.success is None, "envs that do not declare reports_success pay nothing and record nothing"
    silent_results = [dataclasses.replace(results[0], support=(silent,), query=silent)]
    assert not any(k.startswith("adapt/success") for k in iteration_metrics(silent_results))
