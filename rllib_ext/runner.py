"""MAMLEnvRunner: an RLlib ``SingleAgentEnvRunner`` that samples, adapts and samples again, one task at a time.

Why a subclass (RLlib's own extension point, ``config.env_runners(env_runner_cls=...)``):
- RLlib builds runner modules ``inference_only`` (no gradients); the inner step needs a trainable module.
- ``sample(num_episodes=k)`` keeps the first k finished episodes (biased towards short ones) and counts the steps
  of dropped ones. Here every sub-env runs exactly ``episodes_per_task / num_envs`` whole episodes: no episode is
  dropped, and only steps of returned episodes count as ``env_steps`` (a sub-env that has run its share idles).
- The stock connector pipelines cost ~50% of sampling time; the core sampler (``metarl.sampler``) steps the
  sub-envs and the policy net directly and produces the same episodes as the stock pipeline for the same seeds
  (tests/test_sampler.py; speed in ``benchmarks/sampler_throughput.py``).

Per task the adapted parameters θ_1..θ_K live in a dict passed to the sampler (``functional_call``); the module
keeps θ throughout. Everything random in a task job is seeded from the job (``seed``), not from the runner, so a
task gives the same episodes on whichever runner runs it (retries after a runner failure, 0 vs N runners, resume).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from metarl import sampler, trial
from metarl.policy_net import functional_log_prob
from metarl.rl import EpisodeBatch, adapt_policy
from rllib_ext.jobs import TaskJob, TaskResult

__all__ = ["MAMLEnvRunner", "TaskJob", "TaskResult"]


class MAMLEnvRunner(SingleAgentEnvRunner):
    """Per task: support episodes with θ, inner step(s) on them, query episodes with the adapted θ_K."""

    def make_module(self):
        env = self.env.unwrapped if self.env is not None else None
        spec = self.config.get_rl_module_spec(env=env, spaces=self.get_spaces(), inference_only=False)
        self.module = spec.build()
        self.module.to(self._device)

    # --- the meta-learning job ---------------------------------------------------------------------------------
    def run_tasks(self, jobs: list[TaskJob]) -> list[TaskResult]:
        return [self.run_task(job) for job in jobs]

    def run_task(self, job: TaskJob) -> TaskResult:
        cfg = self.config
        net = self.module.net
        self.env.unwrapped.call("set_task", job.task)
        if cfg.memory == "trial":
            return self._run_trial(job)
        params = {k: p.detach() for k, p in net.named_parameters()}  # θ_k; the module itself keeps θ
        p0 = next(net.parameters())
        support, inner_losses, adapted = [], [], []
        t_sample = t_adapt = 0.0
        for k in range(job.inner_steps + 1):
            t0 = time.perf_counter()
            batch = self.sample_episodes(job.episodes_per_task, seed=sampler.derive_seed(job.seed, k),
                                         weights_id=f"{job.iteration}/{k}", params=params)
            t_sample += time.perf_counter() - t0
            if k == job.inner_steps:
                break
            support.append(batch)
            t0 = time.perf_counter()
            new_params, losses = adapt_policy(
                lambda p, o, a: functional_log_prob(net, p, o, a)[0],
                {n: v.requires_grad_() for n, v in params.items()},
                [batch.tensors(p0.dtype, self._device)],
                lr=job.lr(cfg.inner_lr),
                gamma=cfg.gamma,
                first_order=True,
                normalize_advantages=cfg.normalize_advantages,
                objective=cfg.inner_objective,  # the same step for every objective; the logged loss is its own
            )
            inner_losses += losses
            params = {n: v.detach() for n, v in new_params.items()}
            if job.return_params:
                adapted.append({n: v.cpu().clone() for n, v in params.items()})
            t_adapt += time.perf_counter() - t0
        return TaskResult(
            task_index=job.task_index,
            task=np.asarray(job.task.as_array()),
            support=tuple(support),
            query=batch,
            inner_losses=tuple(inner_losses),
            time_sample_s=t_sample,
            time_adapt_s=t_adapt,
            runner=self.worker_index,
            adapted_params=tuple(adapted) if job.return_params else None,
        )

    def _run_trial(self, job: TaskJob) -> TaskResult:
        """Trial memory: the job's phases are one trial on every sub-env (``metarl.trial.sample_trial``): the state
        starts from the initial state here, at the job's start, and runs on across episodes and phases."""
        cfg = self.config
        t0 = time.perf_counter()
        batches, adapted, losses = trial.sample_trial(
            self.sub_envs(), self.module.net, inner_steps=job.inner_steps, num_episodes=job.episodes_per_task,
            seed=job.seed, lr=job.lr(cfg.inner_lr), gamma=cfg.gamma, objective=cfg.inner_objective,
            normalize_advantages=cfg.normalize_advantages, trial_returns=cfg.uses_trial_returns,
            weights_prefix=f"{job.iteration}/")
        return TaskResult(
            task_index=job.task_index,
            task=np.asarray(job.task.as_array()),
            support=tuple(batches[:-1]),
            query=batches[-1],
            inner_losses=tuple(losses),
            time_sample_s=time.perf_counter() - t0,  # sampling and inner steps together
            time_adapt_s=0.0,
            runner=self.worker_index,
            adapted_params=tuple({n: v.cpu().clone() for n, v in p.items()} for p in adapted)
            if job.return_params else None,
        )

    # --- the sampler ------------------------------------------------------------------------------------------
    def sub_envs(self) -> list[gym.Env]:
        """The sub-envs of the runner's SyncVectorEnv, each with its gymnasium wrappers (TimeLimit etc.)."""
        vec = self.env.unwrapped
        if not isinstance(vec, gym.vector.SyncVectorEnv):
            raise ValueError(
                f"MAMLEnvRunner needs a SyncVectorEnv (config.gym_env_vectorize_mode = "
                f"{self.config.gym_env_vectorize_mode!r}; allowed: 'SYNC'), got {type(vec).__name__}"
            )
        return vec.envs

    def sample_episodes(
        self, num_episodes: int, *, seed: int, weights_id: str = "", env_seeds: Sequence[int] | None = None,
        params: dict[str, torch.Tensor] | None = None,
    ) -> EpisodeBatch:
        """Exactly ``num_episodes`` whole episodes of the runner's sub-envs with ``params`` (None: the module's θ).

        ``metarl.sampler.sample_episodes`` on the SyncVectorEnv's sub-envs, stepped directly (skipping the vector
        env's info merging). ``env_seeds``: reset seed of each sub-env (tests: RLlib's stock runner seeds sub-env i
        with ``config.seed + i``); otherwise derived from ``seed``.
        """
        return sampler.sample_episodes(self.sub_envs(), self.module.net, params, num_episodes=num_episodes,
                                       seed=seed, env_seeds=env_seeds, weights_id=weights_id)
