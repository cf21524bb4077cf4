"""``metarl.load_policy(path)``: a trained meta-policy outside RLlib, to act and to adapt (no ``ray.init``).

The whole deployment workflow::

    policy = metarl.load_policy("runs/hc")                  # run folder (checkpoints/latest) or a checkpoint
    env = metarl.tasks.make("halfcheetah-dir"); env.unwrapped.task = env.unwrapped.test_tasks(1)[0]
    support = policy.sample_episodes(env, 20, seed=0)      # episodes with θ
    policy.adapt(support)                                  # θ' = θ - α ∇θ L_inner(θ; support)
    action, state = policy.act(obs, state)                 # act with θ' (state: the recurrent state)

``adapt`` is the EnvRunner's inner step (``metarl.rl.adapt_policy``, VPG with the linear baseline, the checkpoint's
``inner_lr`` and ``gamma``), so θ' here is the θ' the policy was meta-trained to use. Ray (RLlib's ``RLModule``
classes) is imported inside ``load_policy`` only.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

from metarl.rl import EpisodeBatch, adapt_policy

logger = logging.getLogger(__name__)


class MetaPolicy:
    """A loaded policy: ``act`` (one step, batched or not), ``adapt`` (inner steps in place), ``reset`` (to θ)."""

    def __init__(self, module, *, inner_lr: float, gamma: float, normalize_advantages: bool = True,
                 seed: int = 0, config=None):
        self.module = module
        self.inner_lr = float(inner_lr)
        self.gamma = float(gamma)
        self.normalize_advantages = bool(normalize_advantages)
        self.config = config
        self._theta = copy.deepcopy(module.state_dict())
        self._gen = torch.Generator().manual_seed(int(seed))

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.module.named_parameters())

    def reset(self) -> None:
        """Back to the meta-trained θ (undo every ``adapt``)."""
        self.module.load_state_dict(self._theta)

    def initial_state(self, batch_size: int = 1) -> dict:
        return self.module.initial_state(batch_size)

    @torch.no_grad()
    def act(self, obs, state: dict | None = None, explore: bool = True) -> tuple[np.ndarray, dict]:
        """obs (D,) or (B, D) -> (action (A,) or (B, A) [int for discrete], next state). ``explore=False``: the mean
        / argmax action. Box actions are NOT clipped to the action space (the log-probs are of the raw sample)."""
        p = next(self.module.parameters())
        o = torch.as_tensor(np.asarray(obs), dtype=p.dtype, device=p.device)
        single = o.dim() == 1
        o = o.unsqueeze(0) if single else o  # (B, D)
        if state is None:
            state = self.initial_state(o.shape[0])
        y, next_state = self.module.dist_inputs(o, state)
        y = y.cpu()
        if self.module.discrete:
            action = (torch.multinomial(torch.softmax(y, -1), 1, generator=self._gen).squeeze(-1) if explore
                      else y.argmax(-1))
        else:
            mean, log_std = y.chunk(2, dim=-1)
            noise = torch.randn(mean.shape, generator=self._gen, dtype=mean.dtype) if explore else 0.0
            action = mean + noise * log_std.exp()
        action = action.numpy()
        return (action[0] if single else action), next_state

    def adapt(self, episodes: EpisodeBatch | Sequence[EpisodeBatch], *, lr: float | None = None,
              steps: int = 1) -> list[float]:
        """θ_{k+1} = θ_k - α ∇ L_inner(θ_k; support_k), written into the policy; returns the inner losses.

        ``episodes``: one batch, used at every one of the ``steps`` steps, or a list with one batch per step
        (``steps`` must then equal its length). ``lr`` defaults to the checkpoint's ``inner_lr``.
        """
        from rllib_ext.module import functional_log_prob

        seq = [episodes] * steps if isinstance(episodes, EpisodeBatch) else list(episodes)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"adapt(): steps = {steps!r} must be an integer >= 1")
        if len(seq) != steps:
            raise ValueError(f"adapt(): {len(seq)} episode batches given but steps = {steps}: pass one batch per step")
        p = next(self.module.parameters())
        new, losses = adapt_policy(
            lambda prm, o, a: functional_log_prob(self.module, prm, o, a),
            self.params,
            [b.tensors(p.dtype, p.device) for b in seq],
            lr=self.inner_lr if lr is None else float(lr),
            gamma=self.gamma,
            first_order=True,
            normalize_advantages=self.normalize_advantages,
        )
        with torch.no_grad():
            for name, param in self.module.named_parameters():
                param.copy_(new[name].detach())
        return losses

    def sample_episodes(self, env: gym.Env, n: int, *, seed: int | None = None, explore: bool = True) -> EpisodeBatch:
        """``n`` whole episodes of ``env`` (its current task) with the current parameters, padded to the horizon."""
        horizon = int(env.spec.max_episode_steps) if env.spec and env.spec.max_episode_steps else None
        if horizon is None:
            raise ValueError("sample_episodes(): env has no TimeLimit (spec.max_episode_steps); wrap it first")
        discrete = isinstance(env.action_space, gym.spaces.Discrete)
        space = env.action_space
        obs_dim = env.observation_space.shape[0]
        act_shape = () if discrete else space.shape
        obs_b = np.zeros((n, horizon, obs_dim), np.float64)
        act_b = np.zeros((n, horizon, *act_shape), np.int64 if discrete else np.float64)
        rew_b, mask_b = np.zeros((n, horizon)), np.zeros((n, horizon))
        for e in range(n):
            obs, _ = env.reset(seed=None if seed is None else seed + e)
            state = None
            for t in range(horizon):
                action, state = self.act(obs, state, explore=explore)
                env_action = action if discrete else np.clip(action, space.low, space.high)
                obs_b[e, t], act_b[e, t], mask_b[e, t] = obs, action, 1.0
                obs, r, term, trunc, _ = env.step(env_action)
                rew_b[e, t] = r
                if term or trunc:
                    break
        p = next(self.module.parameters())
        with torch.no_grad():  # log π_old of the sampling policy, for the record (the inner step does not use it)
            logp = self.module.log_prob(torch.as_tensor(obs_b, dtype=p.dtype),
                                        torch.as_tensor(act_b, dtype=p.dtype if not discrete else torch.long))
        return EpisodeBatch(obs=obs_b, actions=act_b, rewards=rew_b, mask=mask_b,
                            logp=(logp.double().numpy() * mask_b))


def load_policy(path, *, seed: int = 0) -> MetaPolicy:
    """The policy of a run folder (its ``checkpoints/latest``) or of a checkpoint folder; ValueError if neither."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_ext.checkpoint import POLICY_SUBDIR, load_config, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    config = load_config(ckpt)
    try:
        module = RLModule.from_checkpoint(str((ckpt / POLICY_SUBDIR).resolve()))
    except Exception as e:  # noqa: BLE001 - a corrupt module file, whatever the unpickling error
        raise ValueError(f"checkpoint {str(ckpt)!r}: cannot load the policy module from {POLICY_SUBDIR}: {e}") from e
    module.eval()
    logger.info("loaded %s (%s, width %s) from %s", config.backbone, config.task, config.width, ckpt)
    return MetaPolicy(module, inner_lr=config.inner_lr, gamma=config.gamma,
                      normalize_advantages=config.normalize_advantages, seed=seed, config=config)
