"""MAMLEnvRunner: an RLlib ``SingleAgentEnvRunner`` that samples, adapts and samples again, one task at a time.

Why a subclass (RLlib's own extension point, ``config.env_runners(env_runner_cls=...)``):
- RLlib builds runner modules ``inference_only`` (no gradients); the inner step needs a trainable module.
- ``sample(num_episodes=k)`` keeps the first k finished episodes (biased towards short ones) and counts the steps
  of dropped ones. Here every sub-env runs exactly ``episodes_per_task / num_envs`` whole episodes: no episode is
  dropped, and only steps of returned episodes count as ``env_steps`` (the rest are reported as discarded).
- The stock connector pipelines cost ~55% of sampling time; this loop calls the vector env and the module
  directly (the fast path measured in ``benchmarks/sampler_throughput.py``).

Everything random in a task job is seeded from the job (``seed``), not from the runner, so a task gives the same
episodes on whichever runner runs it (retries after a runner failure, 0 vs N runners, resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from metarl.rl import EpisodeBatch, adapt_policy
from rllib_ext.module import functional_log_prob


@dataclass(frozen=True)
class TaskJob:
    """One task of a meta-batch, as sent to a runner."""

    task: object
    task_index: int
    iteration: int
    seed: int
    return_params: bool = False  # tests: also return the adapted parameters θ_1..θ_K


def _derive_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class MAMLEnvRunner(SingleAgentEnvRunner):
    """Per task: support episodes with θ, inner step(s) on them, query episodes with the adapted θ', restore θ."""

    def make_module(self):
        env = self.env.unwrapped if self.env is not None else None
        spec = self.config.get_rl_module_spec(env=env, spaces=self.get_spaces(), inference_only=False)
        self.module = spec.build()
        self.module.to(self._device)

    # --- the meta-learning job ---------------------------------------------------------------------------------
    def run_tasks(self, jobs: list[TaskJob]) -> list[dict]:
        return [self.run_task(job) for job in jobs]

    def run_task(self, job: TaskJob) -> dict:
        cfg = self.config
        module = self.module
        vec = self.env.unwrapped
        vec.call("set_task", job.task)
        theta = {k: p.detach().clone() for k, p in module.named_parameters()}
        params = dict(module.named_parameters())
        support, inner_losses, adapted = [], [], []
        t_sample = t_adapt = 0.0
        discarded = 0
        try:
            for k in range(cfg.inner_steps + 1):
                t0 = time.perf_counter()
                batch, n_discarded = self.sample_episodes(
                    cfg.episodes_per_task,
                    seed=_derive_seed(job.seed, k),
                    weights_id=f"{job.iteration}/{k}",
                )
                discarded += n_discarded
                t_sample += time.perf_counter() - t0
                if k == cfg.inner_steps:
                    query = batch
                    break
                support.append(batch)
                t0 = time.perf_counter()
                dtype = next(module.parameters()).dtype
                new_params, losses = adapt_policy(
                    lambda p, o, a: functional_log_prob(module, p, o, a),
                    params,
                    [batch.tensors(dtype, self._device)],
                    lr=cfg.inner_lr,
                    gamma=cfg.gamma,
                    first_order=True,
                    normalize_advantages=cfg.normalize_advantages,
                )
                inner_losses += losses
                with torch.no_grad():  # act with θ_{k+1}: write it into the module (restored below)
                    for name, p in module.named_parameters():
                        p.copy_(new_params[name].detach())
                params = dict(module.named_parameters())
                if job.return_params:
                    adapted.append({n: v.detach().cpu().clone() for n, v in new_params.items()})
                t_adapt += time.perf_counter() - t0
        finally:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    p.copy_(theta[name])
        returns = [float(b.episode_returns().mean()) for b in [*support, query]]
        out = {
            "task_index": job.task_index,
            "task": np.asarray(job.task.as_array()),
            "support": support,
            "query": query,
            "inner_losses": inner_losses,
            "returns": returns,  # mean return with θ_k, k = 0..inner_steps
            "env_steps": sum(b.num_steps for b in [*support, query]),
            "discarded_steps": discarded,
            "time_sample_s": t_sample,
            "time_adapt_s": t_adapt,
            "runner": self.worker_index,
        }
        if job.return_params:
            out["adapted_params"] = adapted
        return out

    # --- the sampler ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_episodes(self, num_episodes: int, *, seed: int, weights_id: str = "") -> tuple[EpisodeBatch, int]:
        """Exactly ``num_episodes`` whole episodes with the module's current weights, stochastic policy.

        Sub-env i runs episodes ``num_episodes // num_envs`` times; a sub-env that finished its share idles (its
        physics steps are discarded and counted). A sub-env that resets mid-batch gets a fresh recurrent state.
        Returns (episodes padded to the horizon, discarded steps).
        """
        vec = self.env.unwrapped
        n = vec.num_envs
        if num_episodes % n:
            raise ValueError(f"episodes_per_task ({num_episodes}) must be a multiple of num_envs_per_env_runner ({n})")
        quota = num_episodes // n
        horizon = int(vec.envs[0].spec.max_episode_steps)
        module = self.module
        p0 = next(module.parameters())
        dtype, device = p0.dtype, p0.device
        space = vec.single_action_space
        discrete = isinstance(space, gym.spaces.Discrete)
        low = high = None
        if not discrete and (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            low, high = space.low, space.high
        gen = torch.Generator(device="cpu").manual_seed(_derive_seed(seed, 1))

        fdt = np.float64 if dtype == torch.float64 else np.float32
        obs_dim = vec.single_observation_space.shape[0]
        act_shape = () if discrete else space.shape
        obs_buf = np.zeros((n, quota, horizon, obs_dim), fdt)
        act_buf = np.zeros((n, quota, horizon, *act_shape), np.int64 if discrete else fdt)
        rew_buf = np.zeros((n, quota, horizon), fdt)
        logp_buf = np.zeros((n, quota, horizon), fdt)
        mask_buf = np.zeros((n, quota, horizon), fdt)

        obs, _ = vec.reset(seed=[_derive_seed(seed, 2, i) for i in range(n)])
        init_state = module.initial_state(n)
        state = init_state
        active = np.ones(n, bool)
        pending_reset = np.zeros(n, bool)  # NEXT_STEP autoreset: the next step() of a finished sub-env resets it
        ep = np.zeros(n, np.int64)
        t = np.zeros(n, np.int64)
        discarded = 0
        rows = np.arange(n)
        while active.any():
            obs_t = torch.as_tensor(obs, dtype=dtype, device=device)
            y, next_state = module.dist_inputs(obs_t, state)
            if discrete:
                logits = torch.log_softmax(y, -1)
                action = torch.multinomial(logits.exp().cpu(), 1, generator=gen).squeeze(-1)
                logp = logits.cpu().gather(-1, action.unsqueeze(-1)).squeeze(-1)
                env_action = action.numpy()
            else:
                mean, log_std = y.cpu().chunk(2, dim=-1)
                noise = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
                action = mean + noise * log_std.exp()
                logp = (-0.5 * noise * noise - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
                env_action = action.numpy()
                if low is not None:
                    env_action = np.clip(env_action, low, high)
            next_obs, rew, term, trunc, _ = vec.step(env_action)
            record = active & ~pending_reset
            r = rows[record]
            obs_buf[r, ep[r], t[r]] = obs[r]
            act_buf[r, ep[r], t[r]] = action.numpy()[r]
            rew_buf[r, ep[r], t[r]] = rew[r]
            logp_buf[r, ep[r], t[r]] = logp.numpy()[r]
            mask_buf[r, ep[r], t[r]] = 1.0
            t[r] += 1
            discarded += int((~active).sum())
            fresh = pending_reset.copy()  # rows whose step() just reset them: new episode, fresh state
            done = record & (term | trunc)
            ep[done] += 1
            t[done] = 0
            pending_reset = done
            active &= ep < quota
            if fresh.any():
                f = torch.as_tensor(fresh, device=device)
                next_state = {
                    k: torch.where(f.view(-1, *([1] * (v.dim() - 1))), init_state[k], v) for k, v in next_state.items()
                }
            state = next_state
            obs = next_obs
        batch = EpisodeBatch(
            obs=obs_buf.reshape(n * quota, horizon, obs_dim),
            actions=act_buf.reshape(n * quota, horizon, *act_shape),
            rewards=rew_buf.reshape(n * quota, horizon),
            mask=mask_buf.reshape(n * quota, horizon),
            logp=logp_buf.reshape(n * quota, horizon),
            weights_id=weights_id,
        )
        return batch, discarded
