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

Everything runs in-process (no ``ray.init``): EnvRunners built directly from the config.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from rllib_ext.algorithm import MAMLConfig
from rllib_ext.runner import MAMLEnvRunner, _derive_seed

NAV_GOAL = dict(terminate_at_goal=True, goal_tolerance=0.25, max_episode_steps=25)


def config(*, task: str, backbone: str, num_envs: int, episodes: int, task_options: dict, seed: int = 7):
    cfg = (
        MAMLConfig()
        .meta(task=task, backbone=backbone, width=16, episodes_per_task=episodes, task_options=task_options)
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
    """Step the module over one episode's obs (T, D) from ``state`` (None: initial) -> (dist inputs, states)."""
    ys, hs = [], []
    for t in range(obs.shape[0]):
        y, state = module.dist_inputs(obs[t : t + 1], state)
        ys.append(y[0])
        hs.append(state["h"][0] if state else torch.zeros(0))
    return torch.stack(ys), torch.stack(hs), state


CASES = [  # (task, task options, backbone, sub-envs, episodes): fixed and variable episode lengths
    ("halfcheetah-vel", {"max_episode_steps": 12}, "mlp", 2, 4),
    ("halfcheetah-vel", {"max_episode_steps": 12}, "ssm", 2, 4),
    ("navigation-2d", NAV_GOAL, "gru", 3, 9),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("task", "options", "backbone", "num_envs", "episodes"), CASES)
def test_same_episodes_as_the_stock_rllib_pipeline(task, options, backbone, num_envs, episodes):
    cfg = config(task=task, backbone=backbone, num_envs=num_envs, episodes=episodes, task_options=options)
    ours = MAMLEnvRunner(config=cfg)
    try:
        seed = 11
        batch, discarded = ours.sample_episodes(
            episodes, seed=seed, env_seeds=[cfg.seed + i for i in range(num_envs)]  # RLlib's: config.seed + i
        )
        module = ours.module
        weights = module.get_state()
    finally:
        ours.stop()
    assert discarded == 0
    horizon = cfg.horizon
    stock = stock_episodes(cfg, weights, steps=num_envs * episodes * (horizon + 1), torch_seed=_derive_seed(seed, 1))
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
        batch, _ = runner.sample_episodes(num_envs * quota, seed=5)
        module = runner.module
        lengths = episode_lengths(batch).reshape(num_envs, quota)
        # precondition: sub-envs end episodes at different iterations, so some reset while others continue
        ends = [set(np.cumsum(lengths[i] + 1)) for i in range(num_envs)]  # +1: the reset iteration
        assert any(ends[i] != ends[j] for i in range(num_envs) for j in range(i)), lengths
        obs, actions = torch.as_tensor(batch.obs), torch.as_tensor(batch.actions)
        with torch.no_grad():
            fresh = module.log_prob(obs, actions)  # (E, T), every episode from the initial state
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
        x, y, z = a.sample_episodes(4, seed=3)[0], b.sample_episodes(4, seed=3)[0], a.sample_episodes(4, seed=4)[0]
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
