"""``metarl.load_policy(path)``: a trained meta-policy outside RLlib, to act and to adapt (no ``ray.init``).

The whole deployment workflow::

    policy = metarl.load_policy("runs/hc")                  # run folder (checkpoints/latest) or a checkpoint
    env = metarl.tasks.make("halfcheetah-dir"); env.unwrapped.task = env.unwrapped.test_tasks(1)[0]
    support = policy.sample_episodes(env, 20, seed=0)      # episodes with θ
    policy.adapt(support)                                  # θ' = θ - α ∇θ L_inner(θ; support)
    action, state = policy.act(obs, state)                 # act with θ' (state: the recurrent state)

``adapt`` is the EnvRunner's inner step (``metarl.rl.adapt_policy``, VPG with the linear baseline, the checkpoint's
``inner_lr`` and ``gamma``), so θ' here is the θ' the policy was meta-trained to use; ``sample_episodes`` is the
EnvRunner's sampler (``metarl.sampler``) on one env. Ray (RLlib's ``RLModule``
classes) is imported inside ``load_policy`` only.

A policy trained with trial memory (``memory="trial"``) adapts in context too: the recurrent state (and RL²'s
previous action and reward) runs on across the episodes of a phase and across phases, as on the runner::

    batches, carry = policy.sample_trial(envs, 20, inner_steps=1, seed=0)  # a runner's task job, θ_1 kept
    # or by hand on one env: one TrialCarry (metarl.sampler) for the whole trial
    carry = TrialCarry()                                              # a new trial
    support = policy.sample_episodes(env, 10, seed=0, carry=carry)   # the state runs on in ``carry``
    policy.adapt(support)                 # phase 0 starts the trial; a later phase: carry=<its starting carry>
    query = policy.sample_episodes(env, 10, seed=1, carry=carry)     # θ_1, from the state the support phase left
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

from metarl import sampler
from metarl.policy_net import PolicyNet, functional_log_prob
from metarl.rl import EpisodeBatch, adapt_policy
from metarl.sampler import TrialCarry, derive_seed
from metarl.trial import adapt_trial, copied, phase_advantages

logger = logging.getLogger(__name__)

#: key of the previous action (RL² inputs) in the state ``MetaPolicy.act`` returns
PREV_ACTION = "prev_action"


class MetaPolicy:
    """A loaded policy: ``act`` (one step, batched or not), ``adapt`` (inner steps), ``reset`` (back to θ).

    θ stays in the module; the adapted θ' is a dict of tensors the policy acts with (``torch.func.functional_call``),
    so ``adapt`` never writes into the module.
    """

    def __init__(self, module, *, inner_lr: float, gamma: float, normalize_advantages: bool = True,
                 seed: int = 0, config=None, memory: str = "episode", trial_returns: bool | None = None,
                 inner_objective: str = "vpg"):
        if memory not in ("episode", "trial"):
            raise ValueError(f"MetaPolicy: memory = {memory!r}; allowed: 'episode' or 'trial'")
        self.module = module
        self.net: PolicyNet = module.net
        self.inner_lr = float(inner_lr)
        self.gamma = float(gamma)
        self.normalize_advantages = bool(normalize_advantages)
        self.memory = memory  # "trial": adapt/sample_trial carry the state across episodes and phases
        self.trial_returns = memory == "trial" if trial_returns is None else bool(trial_returns)
        self.inner_objective = inner_objective
        self.config = config
        self._adapted: dict[str, torch.Tensor] | None = None  # θ' after adapt(); None: θ
        self._gen = torch.Generator().manual_seed(int(seed))

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The parameters the policy acts with: θ' after ``adapt``, else θ (names of ``self.net.named_parameters()``)."""
        return dict(self._adapted) if self._adapted is not None else dict(self.net.named_parameters())

    def reset(self) -> None:
        """Back to the meta-trained θ (undo every ``adapt``)."""
        self._adapted = None

    def initial_state(self, batch_size: int = 1) -> dict:
        return self.net.initial_state(batch_size)

    @torch.no_grad()
    def act(self, obs, state: dict | None = None, explore: bool = True, *, reward=None,
            episode_start=None) -> tuple[np.ndarray, dict]:
        """obs (D,) or (B, D) -> (action (A,) or (B, A) [int for discrete], next state). ``explore=False``: the mean
        / argmax action. Box actions are NOT clipped to the action space (the log-probs are of the raw sample).

        A policy trained with RL² inputs (``trial_inputs``) also needs the previous step's ``reward`` (scalar or
        (B,); ignored at a trial's first step) and ``episode_start`` (True on each episode's first step); the
        previous action travels in ``state`` (key ``"prev_action"``). Pass the returned state on across the
        episodes of a trial, ``None`` to start a new trial."""
        p = next(self.net.parameters())
        o = torch.as_tensor(np.asarray(obs), dtype=p.dtype, device=p.device)
        single = o.dim() == 1
        o = o.unsqueeze(0) if single else o  # (B, D)
        if state is None:
            state = self.initial_state(o.shape[0])
        x, state = self._trial_input(o, state, reward, episode_start) if self.net.trial_inputs else (o, state)
        y, next_state = sampler.call_with_params(self.net, self._adapted, lambda net: net(x, state))
        action, _ = sampler.sample_action(y.cpu(), discrete=self.net.discrete, generator=self._gen, explore=explore)
        if self.net.trial_inputs:
            next_state = {**next_state, PREV_ACTION: self.net.action_features(action, p.dtype).to(p.device)}
        action = action.numpy()
        if not np.isfinite(action).all():
            raise FloatingPointError(f"act(): the policy produced a non-finite action {action.tolist()[:4]} for obs "
                                     f"{np.asarray(obs).tolist()[:4]}: its parameters or the observation diverged")
        return (action[0] if single else action), next_state

    def _trial_input(self, o: torch.Tensor, state: dict, reward, episode_start) -> tuple[torch.Tensor, dict]:
        """RL²'s input for this step and the recurrent state without the previous action."""
        if episode_start is None:
            raise ValueError("act(): this policy reads RL² inputs (trial_inputs): pass episode_start (True on each "
                             "episode's first step) and, after a trial's first step, reward (the previous step's)")
        b = o.shape[0]
        state = dict(state)
        prev_a = state.pop(PREV_ACTION, None)
        first_of_trial = prev_a is None
        if first_of_trial:
            prev_a = torch.zeros(b, self.net.action_feature_dim, dtype=o.dtype, device=o.device)
        prev_r = torch.zeros(b, dtype=o.dtype, device=o.device) if first_of_trial or reward is None else \
            torch.as_tensor(np.asarray(reward), dtype=o.dtype, device=o.device).reshape(-1).expand(b)
        first = torch.as_tensor(np.asarray(episode_start), dtype=o.dtype, device=o.device).reshape(-1).expand(b)
        return self.net.trial_input(o, prev_a, prev_r, first), state

    def adapt(self, episodes: EpisodeBatch | Sequence[EpisodeBatch], *, lr: float | None = None,
              steps: int | None = None, carry: TrialCarry | None = None, num_envs: int | None = None) -> list[float]:
        """θ_{k+1} = θ_k - α ∇ L_inner(θ_k; support_k), kept by the policy; returns the inner losses.

        ``episodes``: one batch, used at every one of the ``steps`` steps (default 1), or a list with one batch per
        step (``steps`` defaults to, and must equal, its length). ``lr`` defaults to the checkpoint's ``inner_lr``
        (>= 0; 0 keeps θ).

        Trial memory (``memory="trial"``): the batches are consecutive phases of ONE trial (a list, one per step),
        replayed from ``carry``, the trial's carry at the first phase's start (None: a new trial), each phase's
        episodes ``num_envs`` sub-envs' trials (default: the carry's rows, else 1), with returns across the
        phase's episodes: ``metarl.trial.adapt_trial``, first order, as the runner adapts.
        """
        single = isinstance(episodes, EpisodeBatch)
        seq = [episodes] if single else list(episodes)
        steps = len(seq) if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"adapt(): steps = {steps!r} must be an integer >= 1")
        seq = seq * steps if single else seq
        if len(seq) != steps:
            raise ValueError(f"adapt(): {len(seq)} episode batches given but steps = {steps}: pass one batch per step")
        if self.memory == "trial" and single and len(seq) > 1:
            raise ValueError(f"adapt(): steps = {steps} with one batch: with trial memory pass one batch per phase")
        lr = self.inner_lr if lr is None else float(lr)
        if self.memory == "trial":
            new, losses = self._adapt_trial(seq, lr=lr, carry=carry, num_envs=num_envs)
        else:
            p = next(self.net.parameters())
            new, losses = adapt_policy(
                lambda prm, o, a: functional_log_prob(self.net, prm, o, a)[0],
                {n: v.detach().requires_grad_() for n, v in self.params.items()},
                [b.tensors(p.dtype, p.device) for b in seq],
                lr=lr,
                gamma=self.gamma,
                first_order=True,
                normalize_advantages=self.normalize_advantages,
            )
        self._adapted = {n: v.detach() for n, v in new.items()}
        for name, v in self._adapted.items():
            if not bool(torch.isfinite(v).all()):
                self._adapted = None  # back to θ: a diverged θ' is never acted with
                raise FloatingPointError(
                    f"adapt(): after {steps} inner step(s) with lr {lr}, parameter "
                    f"{name!r} is not finite (losses {losses}); the policy was reset to θ"
                )
        return losses

    def _adapt_trial(self, seq: Sequence[EpisodeBatch], *, lr: float, carry: TrialCarry | None,
                     num_envs: int | None) -> tuple[dict[str, torch.Tensor], list[float]]:
        """Trial memory's inner steps over consecutive phases (``metarl.trial.adapt_trial``, first order)."""
        n = num_envs or _carry_rows(carry) or 1
        p = next(self.net.parameters())
        phases = []
        for b in seq:
            t = b.tensors(p.dtype, p.device)
            t["advantages"] = phase_advantages(t, n, gamma=self.gamma, normalize=self.normalize_advantages,
                                               trial_returns=self.trial_returns)
            phases.append(t)
        with torch.enable_grad():
            new, _, losses = adapt_trial(self.net, {k: v.detach().requires_grad_() for k, v in self.params.items()},
                                         phases, n, lr=lr, first_order=True, objective=self.inner_objective,
                                         carry=None if carry is None else copied(carry))
        return new, losses

    def sample_episodes(self, env: gym.Env, n: int, *, seed: int | None = None, explore: bool = True,
                        carry: TrialCarry | None = None) -> EpisodeBatch:
        """``n`` whole episodes of ``env`` (its current task) with the current parameters, padded to the horizon.

        The runners' sampler (``metarl.sampler.sample_episodes``) on this one env: ``seed`` seeds the env's first
        reset and the action noise (None: the noise from the policy's generator, the reset unseeded); Box actions
        are clipped for the env, the raw sample is recorded with its log-prob. ``carry``: trial memory, the state
        (and RL² inputs) starts from it and runs on across the episodes; it holds the trial's end afterwards.
        """
        noise_seed = int(torch.randint(2**31 - 1, (1,), generator=self._gen)) if seed is None else int(seed)
        return sampler.sample_episodes([env], self.net, self._adapted, num_episodes=n, seed=noise_seed,
                                       env_seeds=[seed], explore=explore, carry=carry)

    def sample_trial(self, envs: gym.Env | Sequence[gym.Env], num_episodes: int, *, inner_steps: int, seed: int,
                     lr: float | None = None, explore: bool = True) -> tuple[list[EpisodeBatch], TrialCarry | None]:
        """One task job as a runner runs it, from θ: phase k (k = 0..``inner_steps``) = ``num_episodes`` episodes
        over ``envs`` (env i runs num_episodes / len(envs) of them) with θ_k, seeded ``derive_seed(seed, k)``, then
        θ_{k+1} from phase k (``adapt``). Trial memory: one ``TrialCarry`` runs through every phase
        (``metarl.trial.sample_trial``); episode memory: every episode starts from the initial state (the runner's
        ``run_task``). Returns (the K+1 batches, the carry at the trial's end or None); the policy keeps θ_K."""
        envs = [envs] if isinstance(envs, gym.Env) else list(envs)
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"sample_trial(): inner_steps = {inner_steps!r} must be an integer >= 0")
        self.reset()
        carry = TrialCarry() if self.memory == "trial" else None
        batches = []
        for k in range(inner_steps + 1):
            start = None if carry is None else copied(carry)
            batch = sampler.sample_episodes(envs, self.net, self._adapted, num_episodes=num_episodes,
                                            seed=derive_seed(seed, k), weights_id=f"policy/{k}", explore=explore,
                                            carry=carry)
            batches.append(batch)
            if k < inner_steps:
                self.adapt(batch, lr=lr, carry=start, num_envs=len(envs))
        return batches, carry


def _carry_rows(carry: TrialCarry | None) -> int | None:
    """The number of sub-envs a carry holds (None: a fresh carry)."""
    if carry is None:
        return None
    for v in (*(carry.state or {}).values(), carry.prev_reward):
        if v is not None:
            return int(v.shape[0])
    return None


def load_policy(path, *, seed: int = 0) -> MetaPolicy:
    """The policy of a run folder (its ``checkpoints/latest``) or of a checkpoint folder; ValueError if neither."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_ext import checkpoint as ck
    from rllib_ext.checkpoint import POLICY_SUBDIR, load_config, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    config = load_config(ckpt)
    try:
        module = RLModule.from_checkpoint(str((ckpt / POLICY_SUBDIR).resolve()))
    except Exception as e:  # noqa: BLE001 - a corrupt module file, whatever the unpickling error
        raise ck.diagnose_unreadable(ckpt / POLICY_SUBDIR, e) or ValueError(
            f"checkpoint {str(ckpt)!r}: cannot load the policy module from {POLICY_SUBDIR}: {e}") from e
    ck.check_policy_fits(module, config, ckpt)  # a module of another task/structure fails here, not at act()
    ck.check_finite_parameters(module, ckpt)
    module.eval()
    logger.info("loaded %s (%s, width %s) from %s", config.backbone, config.task, config.width, ckpt)
    return MetaPolicy(module, inner_lr=config.inner_lr, gamma=config.gamma,
                      normalize_advantages=config.normalize_advantages, seed=seed, config=config,
                      memory=config.memory, trial_returns=config.uses_trial_returns,
                      inner_objective=config.inner_objective)
