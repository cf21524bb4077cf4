"""The episode sampler (torch + gymnasium): exactly N whole episodes of a list of envs, acting with given parameters.

Three pieces, each usable alone:

- ``sample_action``: one stochastic (or greedy) action per row from the action-distribution inputs; shared by the
  sampler and ``MetaPolicy.act``. Box: ``a = μ + σ ε``, ``ε ~ N(0, I)`` from a seeded generator (``torch.normal``'s
  arithmetic); Discrete: ``multinomial(softmax(logits))``.
- ``EpisodeRecorder``: time-major logs preallocated for the worst case, scattered into a padded ``EpisodeBatch``
  once at the end (log-probs of Gaussian actions computed there, in one op, from the ε drawn).
- ``sample_episodes``: the loop. One batched forward of the ``PolicyNet`` over all envs per iteration, under the
  parameters passed in (``torch.func.functional_call``, swapped in once per call, not once per step: a per-step
  call doubles the forward's cost at 1 env), so no code writes adapted parameters into a live module.

Resets follow gymnasium's NEXT_STEP autoreset, exactly as RLlib's stock EnvRunner does (the iteration after an
env's last step resets it and its action is ignored), so both consume the same noise and produce the same episodes
for the same seeds (tests/test_sampler.py). Env i runs ``num_episodes / len(envs)`` episodes, then idles (it is no
longer stepped); a reset env starts its new episode from the initial recurrent state (episode memory).

Trial memory (``carry=TrialCarry()``): env i's recurrent state runs on across its episodes and across calls that
pass the same ``TrialCarry`` (the phases of one task), starting from the initial state only in a fresh carry. It
advances only on recorded steps: the forward rows of the reset iteration and of idle envs leave it untouched, so
replaying env i's recorded steps in order from the initial state reproduces it (tests/test_trial_sampler.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metarl.policy_net import PolicyNet, State
from metarl.rl import EpisodeBatch, gaussian_log_prob_of_noise


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from ``seed`` and ``keys`` (``np.random.SeedSequence``): independent streams per key."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def env_reports_success(env: gym.Env) -> bool:
    """True if the env's class declares ``reports_success = True`` (it puts ``info["success"]`` in every step)."""
    return bool(getattr(env.unwrapped, "reports_success", False))


# --- actions --------------------------------------------------------------------------------------------------------


def sample_action(dist_inputs: torch.Tensor, *, discrete: bool, generator: torch.Generator | None,
                  explore: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One action per row of ``dist_inputs`` (B, out) -> (action (B[, A]), aux (B[, A])).

    Box (``[μ, log σ]``): ``a = μ + σ ε`` and aux = ε (zeros and ``a = μ`` when not exploring); Discrete (logits):
    a ~ softmax (argmax when not exploring) and aux = log π(a|s). ``log_prob_of_sample`` turns aux into log π(a|s).
    """
    if discrete:
        logits = torch.log_softmax(dist_inputs, -1)
        if explore:
            action = torch.multinomial(logits.exp(), 1, generator=generator).squeeze(-1)  # (B,)
        else:
            action = logits.argmax(-1)
        return action, logits.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    mean, log_std = dist_inputs.chunk(2, dim=-1)  # (B, A) each
    if not explore:
        return mean, torch.zeros_like(mean)
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)  # ε
    return mean + noise * log_std.exp(), noise  # μ + σ ε (as torch.normal(μ, σ) computes it)


def log_prob_of_sample(dist_inputs: torch.Tensor, aux: torch.Tensor, *, discrete: bool) -> torch.Tensor:
    """log π(a|s) of actions drawn by ``sample_action`` (any leading dims), without dividing by σ again."""
    if discrete:
        return aux
    return gaussian_log_prob_of_noise(aux, dist_inputs.chunk(2, dim=-1)[1])


# --- the recorder ---------------------------------------------------------------------------------------------------


class EpisodeRecorder:
    """Time-major logs of one sampling run (iteration k, env i) -> ``EpisodeBatch`` of whole episodes.

    ``obs[k]`` (n, D) is what the net sees at iteration k (row 0: the first resets); ``rewards[k]`` (n,);
    ``steps``: four lists (iteration k, env i, episode, t), one entry each per recorded env step (four int lists
    convert to arrays faster than a list of tuples); ``success`` (n, quota) when tracked.
    """

    def __init__(self, *, num_envs: int, quota: int, horizon: int, observation_space: gym.Space,
                 action_space: gym.Space, track_success: bool = False):
        self.n, self.quota, self.horizon = num_envs, quota, horizon
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.act_shape = () if self.discrete else tuple(action_space.shape)
        self.obs_dim = int(observation_space.shape[0])
        max_iters = quota * (horizon + 1)  # each episode: <= horizon steps + the reset iteration after it
        self.obs = np.zeros((max_iters + 1, num_envs, self.obs_dim), observation_space.dtype)  # (K+1, n, D)
        self.rewards = np.zeros((max_iters, num_envs), np.float64)  # (K, n)
        self.steps: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        self.log_step = tuple(x.append for x in self.steps)  # bound appends: (k, i, episode, t)
        self.success = np.zeros((num_envs, quota)) if track_success else None
        self._actions: list[torch.Tensor] = []  # per iteration: (n[, A]) as sampled (before clipping)
        self._aux: list[torch.Tensor] = []
        self._dist_inputs: list[torch.Tensor] = []

    def log_actions(self, action: torch.Tensor, aux: torch.Tensor, dist_inputs: torch.Tensor) -> None:
        self._actions.append(action)
        self._aux.append(aux)
        self._dist_inputs.append(dist_inputs)

    def to_batch(self, *, dtype: torch.dtype, weights_id: str = "") -> EpisodeBatch:
        """Scatter the logs into (n * quota, horizon, ...) arrays; obs cast once to ``dtype`` (what the net saw)."""
        n, quota, horizon = self.n, self.quota, self.horizon
        fdt = np.float64 if dtype == torch.float64 else np.float32
        logp = log_prob_of_sample(torch.stack(self._dist_inputs), torch.stack(self._aux), discrete=self.discrete)
        kk, ii, ee, tt = (np.asarray(x, np.int64) for x in self.steps)
        obs = np.zeros((n, quota, horizon, self.obs_dim), fdt)
        act = np.zeros((n, quota, horizon, *self.act_shape), np.int64 if self.discrete else fdt)
        rew, logp_b, mask = (np.zeros((n, quota, horizon), fdt) for _ in range(3))
        obs[ii, ee, tt] = self.obs[kk, ii].astype(fdt)
        act[ii, ee, tt] = torch.stack(self._actions).numpy()[kk, ii]
        rew[ii, ee, tt] = self.rewards[kk, ii]
        logp_b[ii, ee, tt] = logp.numpy()[kk, ii]
        mask[ii, ee, tt] = 1.0
        e = n * quota
        return EpisodeBatch(
            obs=obs.reshape(e, horizon, self.obs_dim),
            actions=act.reshape(e, horizon, *self.act_shape),
            rewards=rew.reshape(e, horizon),
            mask=mask.reshape(e, horizon),
            logp=logp_b.reshape(e, horizon),
            weights_id=weights_id,
            success=None if self.success is None else self.success.reshape(e),
        )


# --- NEXT_STEP autoreset bookkeeping ------------------------------------------------------------------------------


class _Autoreset:
    """Per env: its episode index, time step, whether the next iteration resets it, whether it still runs."""

    def __init__(self, num_envs: int, quota: int):
        self.quota = quota
        self.episode = [0] * num_envs
        self.t = [0] * num_envs
        self.pending = [False] * num_envs
        self.active = [True] * num_envs
        self.num_active = num_envs

    def step(self, envs: Sequence[gym.Env], env_action: np.ndarray, rec: EpisodeRecorder, k: int) -> list[int]:
        """Reset the pending envs, step the active ones into ``rec``'s row k; returns the envs just reset."""
        next_obs, rew, success = rec.obs[k + 1], rec.rewards[k], rec.success
        log_k, log_i, log_ep, log_t = rec.log_step
        episode, t, pending, active = self.episode, self.t, self.pending, self.active
        fresh = []
        for i, env in enumerate(envs):
            if pending[i]:  # this iteration resets env i; its action is ignored
                pending[i] = False
                next_obs[i], _ = env.reset()
                fresh.append(i)
            elif active[i]:
                next_obs[i], rew[i], term, trunc, info = env.step(env_action[i])
                log_k(k)
                log_i(i)
                log_ep(episode[i])
                log_t(t[i])
                if success is not None and info.get("success"):
                    success[i, episode[i]] = 1.0
                if term or trunc:
                    self._end_episode(i)
                else:
                    t[i] += 1
        return fresh

    def _end_episode(self, i: int) -> None:
        self.episode[i] += 1
        self.t[i] = 0
        if self.episode[i] < self.quota:
            self.pending[i] = True
        else:
            self.active[i] = False
            self.num_active -= 1


def _reset_rows(state: State, init_state: State, rows: list[int], n: int) -> State:
    """``state`` with the given rows replaced by the initial state (a new episode starts there)."""
    if not state:
        return state
    f = torch.zeros(n, dtype=torch.bool, device=next(iter(state.values())).device)
    f[rows] = True
    return {key: torch.where(f.view(-1, *([1] * (v.dim() - 1))), init_state[key], v) for key, v in state.items()}


def keep_rows(new: State, old: State, advance: list[bool]) -> State:
    """``new`` on the rows where ``advance`` is True, ``old`` elsewhere (trial memory: only recorded steps count)."""
    if not new or all(advance):
        return new
    f = torch.tensor(advance, dtype=torch.bool, device=next(iter(new.values())).device)
    return {key: torch.where(f.view(-1, *([1] * (v.dim() - 1))), v, old[key]) for key, v in new.items()}


@dataclass
class TrialCarry:
    """What one trial carries on every env from a ``sample_episodes`` call to the next (phase to phase): the
    recurrent state after the env's last recorded step, (n, ...) per key, and that step's action features
    (n, A) and reward (n,) (RL² inputs); None in a fresh carry (a new trial: initial state, zero inputs)."""

    state: State | None = None
    prev_action: torch.Tensor | None = None
    prev_reward: torch.Tensor | None = None

    def filled(self, net: PolicyNet, n: int) -> TrialCarry:
        """This carry with its None fields set to a new trial's values (initial state, zeros)."""
        p = next(net.parameters())
        return TrialCarry(
            state=net.initial_state(n) if self.state is None else self.state,
            prev_action=torch.zeros(n, net.action_feature_dim, dtype=p.dtype, device=p.device)
            if self.prev_action is None else self.prev_action,
            prev_reward=torch.zeros(n, dtype=p.dtype, device=p.device) if self.prev_reward is None else self.prev_reward,
        )


def _net_input(net: PolicyNet, obs: torch.Tensor, carry: TrialCarry | None, book: _Autoreset) -> torch.Tensor:
    if not net.trial_inputs:
        return obs
    first = torch.tensor([t == 0 for t in book.t], dtype=obs.dtype, device=obs.device)
    return net.trial_input(obs, carry.prev_action, carry.prev_reward, first)


def _advance_inputs(net: PolicyNet, carry: TrialCarry, action: torch.Tensor, reward: np.ndarray,
                    stepped: list[bool]) -> None:
    """The previous action and reward of the rows stepped this iteration become this iteration's."""
    if not net.trial_inputs:
        return
    f = torch.tensor(stepped, dtype=torch.bool, device=carry.prev_reward.device)
    feats = net.action_features(action.to(carry.prev_reward.device), carry.prev_reward.dtype)
    carry.prev_action = torch.where(f.unsqueeze(-1), feats, carry.prev_action)
    carry.prev_reward = torch.where(f, torch.as_tensor(reward, dtype=carry.prev_reward.dtype,
                                                        device=f.device), carry.prev_reward)


# --- the loop -------------------------------------------------------------------------------------------------------


class _WithParams(nn.Module):
    """``forward(fn)`` = ``fn(net)``: through ``functional_call`` on this wrapper, ``net`` acts with the parameters
    passed in for the whole call (swapped in and restored once)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, fn: Callable[[nn.Module], object]):
        return fn(self.net)


def call_with_params(net: nn.Module, params: dict[str, torch.Tensor] | None, fn: Callable[[nn.Module], object]):
    """``fn(net)`` with ``net``'s parameters replaced by ``params`` during the call (None: its own parameters)."""
    if params is None:
        return fn(net)
    missing = [name for name, _ in net.named_parameters() if name not in params]
    if missing:
        raise ValueError(f"params lack {missing}: pass every parameter of the net (net.named_parameters() names)")
    return torch.func.functional_call(_WithParams(net), {f"net.{k}": v for k, v in params.items()}, (fn,))


def _check_envs(envs: Sequence[gym.Env], num_episodes: int, env_seeds) -> int:
    n = len(envs)
    if n == 0:
        raise ValueError("sample_episodes(): envs is empty")
    if num_episodes % n or num_episodes < 1:
        raise ValueError(f"episodes_per_task ({num_episodes}) must be a positive multiple of "
                         f"num_envs_per_env_runner ({n})")
    if env_seeds is not None and len(env_seeds) != n:
        raise ValueError(f"env_seeds has {len(env_seeds)} seeds; the runner has {n} sub-envs")
    spec = envs[0].spec
    if spec is None or not spec.max_episode_steps:
        raise ValueError("sample_episodes(): env has no TimeLimit (spec.max_episode_steps); wrap it first")
    return int(spec.max_episode_steps)


def _act_loop(net: PolicyNet, envs: Sequence[gym.Env], rec: EpisodeRecorder, book: _Autoreset, *,
              generator: torch.Generator, explore: bool, carry: TrialCarry | None = None) -> None:
    p0 = next(net.parameters())
    dtype, device = p0.dtype, p0.device
    on_cpu = device.type == "cpu"
    space = envs[0].action_space
    discrete = rec.discrete
    low = high = None
    if not discrete and np.isfinite(space.low).all() and np.isfinite(space.high).all():
        low, high = (torch.as_tensor(b, dtype=dtype) for b in (space.low, space.high))
    n = len(envs)
    if net.trial_inputs and carry is None:
        raise ValueError("a net with trial_inputs needs trial memory: pass carry=TrialCarry()")
    if carry is not None:
        carry = carry.filled(net, n)
    init_state = state = net.initial_state(n) if carry is None else carry.state
    k = 0
    while book.num_active:
        x = _net_input(net, torch.from_numpy(rec.obs[k]).to(dtype=dtype, device=device), carry, book)
        y, new_state = net(x, state)  # (n, out)
        if not on_cpu:
            y = y.cpu()
        action, aux = sample_action(y, discrete=discrete, generator=generator, explore=explore)
        rec.log_actions(action, aux, y)
        env_action = (action if low is None else torch.clamp(action, low, high)).numpy()
        stepped = [a and not p for a, p in zip(book.active, book.pending)]  # rows recorded this iteration
        if carry is not None:
            state = keep_rows(new_state, state, stepped)
        fresh = book.step(envs, env_action, rec, k)
        if carry is not None:
            _advance_inputs(net, carry, action, rec.rewards[k], stepped)
        if carry is None:
            state = new_state
            if fresh:
                state = _reset_rows(state, init_state, fresh, n)
        k += 1
    return None if carry is None else dataclasses.replace(carry, state=state)


@torch.inference_mode()
def sample_episodes(
    envs: Sequence[gym.Env],
    net: PolicyNet,
    params: dict[str, torch.Tensor] | None,
    *,
    num_episodes: int,
    seed: int,
    env_seeds: Sequence[int | None] | None = None,
    weights_id: str = "",
    explore: bool = True,
    carry: TrialCarry | None = None,
) -> EpisodeBatch:
    """Exactly ``num_episodes`` whole episodes, env i running ``num_episodes / len(envs)`` of them, padded to the
    horizon (every env's ``spec.max_episode_steps``), acting with ``net`` under ``params`` (None: its own).

    Args:
        envs: gymnasium envs (with their wrappers: TimeLimit etc.), all with the same spaces and horizon.
        seed: seeds the action noise (``derive_seed(seed, 1)``) and, unless ``env_seeds``, env i's first reset
            (``derive_seed(seed, 2, i)``); later resets are unseeded (the env's own generator continues).
        env_seeds: first-reset seed of each env (None entries: unseeded). RLlib's stock runner uses seed + i.
        weights_id: stored on the batch (``"<iteration>/<inner step>"``).
        explore: False acts with the mean (Box) or the argmax (Discrete).
        carry: trial memory: start env i from ``carry.state`` (a fresh carry: the initial state), never reset it
            at an episode start, and leave the state after env i's last recorded step in ``carry.state``. None:
            episode memory (every episode starts from the initial state).
    """
    horizon = _check_envs(envs, num_episodes, env_seeds)
    n = len(envs)
    if env_seeds is None:
        env_seeds = [derive_seed(seed, 2, i) for i in range(n)]
    rec = EpisodeRecorder(num_envs=n, quota=num_episodes // n, horizon=horizon,
                          observation_space=envs[0].observation_space, action_space=envs[0].action_space,
                          track_success=env_reports_success(envs[0]))
    for i, env in enumerate(envs):
        rec.obs[0, i], _ = env.reset(seed=None if env_seeds[i] is None else int(env_seeds[i]))
    book = _Autoreset(n, num_episodes // n)
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, 1))
    end = call_with_params(net, params, lambda acting: _act_loop(acting, envs, rec, book, generator=gen,
                                                                 explore=explore, carry=carry))
    if carry is not None:
        carry.state, carry.prev_action, carry.prev_reward = end.state, end.prev_action, end.prev_reward
    return rec.to_batch(dtype=next(net.parameters()).dtype, weights_id=weights_id)
