"""MAMLEnvRunner: an RLlib ``SingleAgentEnvRunner`` that samples, adapts and samples again, one task at a time.

Why a subclass (RLlib's own extension point, ``config.env_runners(env_runner_cls=...)``):
- RLlib builds runner modules ``inference_only`` (no gradients); the inner step needs a trainable module.
- ``sample(num_episodes=k)`` keeps the first k finished episodes (biased towards short ones) and counts the steps
  of dropped ones. Here every sub-env runs exactly ``episodes_per_task / num_envs`` whole episodes: no episode is
  dropped, and only steps of returned episodes count as ``env_steps`` (a sub-env that has run its share idles).
- The stock connector pipelines cost ~50% of sampling time; ``sample_episodes`` calls the sub-envs and the
  module directly and produces the same episodes as the stock pipeline for the same seeds (tests/test_sampler.py;
  speed in ``benchmarks/sampler_throughput.py``: ~6x the stock runner at 1 env, 2-4.5x at 8-128).

Everything random in a task job is seeded from the job (``seed``), not from the runner, so a task gives the same
episodes on whichever runner runs it (retries after a runner failure, 0 vs N runners, resume).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    @torch.inference_mode()
    def sample_episodes(
        self, num_episodes: int, *, seed: int, weights_id: str = "", env_seeds: Sequence[int] | None = None
    ) -> tuple[EpisodeBatch, int]:
        """Exactly ``num_episodes`` whole episodes with the module's current weights, stochastic policy.

        Sub-env i runs ``num_episodes // num_envs`` episodes, then idles (it is no longer stepped). Each loop
        iteration is one batched forward over all sub-envs, ``a = μ + σ ε`` with ``ε ~ N(0, I)`` drawn for every
        row from a generator seeded by ``seed``, ``log π(a|s) = Σ_j (-ε_j²/2 - log σ_j - log(2π)/2)``, and one
        ``step`` of every active sub-env with ``clip(a, low, high)``. Resets follow gymnasium's NEXT_STEP autoreset
        (the iteration after a sub-env's last step resets it and its action is ignored), exactly as the stock
        pipeline does, so both consume the same noise. A sub-env that resets mid-batch gets the module's initial
        state for its new episode.

        Fast path (see ``benchmarks/sampler_throughput.py``): the SyncVectorEnv's sub-envs (each with its
        gymnasium wrappers: TimeLimit etc.) are stepped directly, which skips the vector env's info merging;
        steps are logged time-major into preallocated arrays and scattered into episodes once at the end.

        Args:
            num_episodes: a multiple of the number of sub-envs.
            seed: seeds the action noise and (unless ``env_seeds``) the sub-envs' first resets.
            weights_id: stored on the batch (``"<iteration>/<inner step>"``).
            env_seeds: reset seed of each sub-env (tests: RLlib's stock runner seeds sub-env i with ``seed + i``).

        Returns:
            (episodes padded to the horizon, discarded env steps); the latter is 0 (idle sub-envs are not stepped)
            and kept for the result format.
        """
        vec = self.env.unwrapped
        if not isinstance(vec, gym.vector.SyncVectorEnv):
            raise ValueError(
                f"MAMLEnvRunner needs a SyncVectorEnv (config.gym_env_vectorize_mode = "
                f"{self.config.gym_env_vectorize_mode!r}; allowed: 'SYNC'), got {type(vec).__name__}"
            )
        envs = vec.envs
        n = len(envs)
        if num_episodes % n:
            raise ValueError(f"episodes_per_task ({num_episodes}) must be a multiple of num_envs_per_env_runner ({n})")
        if env_seeds is None:
            env_seeds = [_derive_seed(seed, 2, i) for i in range(n)]
        elif len(env_seeds) != n:
            raise ValueError(f"env_seeds has {len(env_seeds)} seeds; the runner has {n} sub-envs")
        quota = num_episodes // n
        horizon = int(envs[0].spec.max_episode_steps)
        module = self.module
        p0 = next(module.parameters())
        dtype, device = p0.dtype, p0.device
        space = vec.single_action_space
        discrete = isinstance(space, gym.spaces.Discrete)
        low = high = None
        if not discrete and (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            low, high = (torch.as_tensor(b, dtype=dtype) for b in (space.low, space.high))
        on_cpu = device.type == "cpu"
        gen = torch.Generator(device="cpu").manual_seed(_derive_seed(seed, 1))

        max_iters = quota * (horizon + 1)  # each episode: <= horizon steps + the reset iteration after it
        obs_dim = vec.single_observation_space.shape[0]
        act_shape = () if discrete else tuple(space.shape)
        obs_log = np.zeros((max_iters + 1, n, obs_dim), vec.single_observation_space.dtype)  # (K+1, n, D)
        act_log: list[torch.Tensor] = []  # per iteration: (n[, A]) actions as sampled (before clipping)
        logp_log: list[torch.Tensor] = []  # discrete: (n,) log-probs
        noise_log: list[torch.Tensor] = []  # Gaussian: (n, A) noise ε and log σ; log-probs after the loop
        log_std_log: list[torch.Tensor] = []
        rew_log = np.zeros((max_iters, n), np.float64)  # (K, n)
        rec_k: list[int] = []  # one entry per recorded env step: iteration, sub-env, episode, time
        rec_i: list[int] = []
        rec_ep: list[int] = []
        rec_t: list[int] = []

        for i, env in enumerate(envs):
            obs_log[0, i], _ = env.reset(seed=int(env_seeds[i]))
        init_state = module.initial_state(n)
        state = init_state
        ep = [0] * n  # episode index of sub-env i
        t = [0] * n  # time step within that episode
        pending = [False] * n  # the next iteration resets sub-env i (NEXT_STEP autoreset)
        active = [True] * n
        num_active = n
        k = 0
        while num_active:
            obs_t = torch.from_numpy(obs_log[k]).to(dtype=dtype, device=device)  # (n, D)
            y, state = module.dist_inputs(obs_t, state)
            if not on_cpu:
                y = y.cpu()
            if discrete:
                logits = torch.log_softmax(y, -1)
                action = torch.multinomial(logits.exp(), 1, generator=gen).squeeze(-1)  # (n,)
                logp_log.append(logits.gather(-1, action.unsqueeze(-1)).squeeze(-1))
                env_action = action.numpy()
            else:
                mean, log_std = y.chunk(2, dim=-1)  # (n, A) each
                noise = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)  # ε
                action = mean + noise * log_std.exp()  # μ + σ ε (as torch.normal(μ, σ) computes it)
                noise_log.append(noise)
                log_std_log.append(log_std)
                env_action = (action if low is None else torch.clamp(action, low, high)).numpy()
            act_log.append(action)
            next_obs, rew = obs_log[k + 1], rew_log[k]
            fresh = []
            for i, env in enumerate(envs):
                if pending[i]:  # this iteration resets sub-env i; its action is ignored
                    pending[i] = False
                    next_obs[i], _ = env.reset()
                    fresh.append(i)
                elif active[i]:
                    next_obs[i], rew[i], term, trunc, _ = env.step(env_action[i])
                    rec_k.append(k)
                    rec_i.append(i)
                    rec_ep.append(ep[i])
                    rec_t.append(t[i])
                    if term or trunc:
                        ep[i] += 1
                        t[i] = 0
                        if ep[i] < quota:
                            pending[i] = True
                        else:
                            active[i] = False
                            num_active -= 1
                    else:
                        t[i] += 1
            if fresh:  # a new episode starts from the initial state
                f = torch.zeros(n, dtype=torch.bool, device=device)
                f[fresh] = True
                state = {
                    key: torch.where(f.view(-1, *([1] * (v.dim() - 1))), init_state[key], v)
                    for key, v in state.items()
                }
            k += 1

        fdt = np.float64 if dtype == torch.float64 else np.float32
        if discrete:
            logp_all = torch.stack(logp_log)  # (K, n)
        else:
            noise, log_std = torch.stack(noise_log), torch.stack(log_std_log)  # (K, n, A)
            logp_all = (-0.5 * noise * noise - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)  # (K, n)
        kk, ii, ee, tt = (np.asarray(x, np.int64) for x in (rec_k, rec_i, rec_ep, rec_t))
        obs_buf = np.zeros((n, quota, horizon, obs_dim), fdt)
        act_buf = np.zeros((n, quota, horizon, *act_shape), np.int64 if discrete else fdt)
        rew_buf = np.zeros((n, quota, horizon), fdt)
        logp_buf = np.zeros((n, quota, horizon), fdt)
        mask_buf = np.zeros((n, quota, horizon), fdt)
        # obs: the env's float64 cast once to the module dtype, as the module saw it
        obs_buf[ii, ee, tt] = obs_log[kk, ii].astype(fdt)
        act_buf[ii, ee, tt] = torch.stack(act_log).numpy()[kk, ii]
        rew_buf[ii, ee, tt] = rew_log[kk, ii]
        logp_buf[ii, ee, tt] = logp_all.numpy()[kk, ii]
        mask_buf[ii, ee, tt] = 1.0
        batch = EpisodeBatch(
            obs=obs_buf.reshape(n * quota, horizon, obs_dim),
            actions=act_buf.reshape(n * quota, horizon, *act_shape),
            rewards=rew_buf.reshape(n * quota, horizon),
            mask=mask_buf.reshape(n * quota, horizon),
            logp=logp_buf.reshape(n * quota, horizon),
            weights_id=weights_id,
        )
        return batch, 0
