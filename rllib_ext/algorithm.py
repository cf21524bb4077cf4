"""MAML (the loop) on RLlib's new API stack; its numbers are ``rllib_ext.config.MAMLConfig``.

One meta-iteration (``MAML.training_step``)::

    tasks  = sample meta_batch_size tasks (seeded sampler; its state is checkpointed)
    runner r, for each of its tasks (MAMLEnvRunner.run_task, no weight round-trip to the driver):
        support_0 ~ π(θ); θ_1 = θ - α∇L_inner; ... ; query ~ π(θ_K); restore θ
    learners: θ <- Adam step(s) on Σ_tasks L_outer(θ_K(θ)) (MAMLLearner.meta_update), shards all-reduced
    runners  <- θ

``inner_steps=0`` is the non-meta baseline: multi-task training of θ on the same tasks without the inner step
(adapted the same way at test time by ``metarl evaluate``).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from metarl import tasks
from rllib_ext.config import META_DEFAULTS, MAMLConfig, gym_env_id
from rllib_ext.runner import TaskJob

__all__ = ["MAML", "MAMLConfig", "META_DEFAULTS", "gym_env_id"]

logger = logging.getLogger(__name__)


class MAML(Algorithm):
    @classmethod
    def get_default_config(cls) -> MAMLConfig:
        return MAMLConfig()

    def setup(self, config) -> None:
        config.validate_meta()
        super().setup(config)
        self._task_env = tasks.make(self.config.task, **self.config.task_options).unwrapped
        seed = self.config.task_seed if self.config.task_seed is not None else (self.config.seed or 0)
        self._task_rng = np.random.default_rng(seed)
        self.last_tasks: list = []
        self._retried_tasks = 0  # tasks re-run after a runner failure (lifetime of this Algorithm object)
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    # --- one meta-iteration --------------------------------------------------------------------------------------
    def training_step(self) -> None:
        cfg = self.config
        iteration = self.iteration
        task_list = self._task_env.sample_tasks(cfg.meta_batch_size, seed=int(self._task_rng.integers(2**31)))
        self.last_tasks = task_list  # the meta-batch of the latest iteration (recorded by the run loop)
        jobs = [
            TaskJob(task=t, task_index=i, iteration=iteration, seed=int(self._task_rng.integers(2**31)))
            for i, t in enumerate(task_list)
        ]
        t0 = time.perf_counter()
        results = self.run_jobs(jobs)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        learner_metrics = self.meta_update(results)
        t_update = time.perf_counter() - t0
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        self._log_iteration(results, learner_metrics, t_sample=t_sample, t_update=t_update)

    def run_jobs(self, jobs: list[TaskJob]) -> list[dict]:
        """Run every job on the runners; re-run the jobs of dead runners. Never drops a task silently."""
        group = self.env_runner_group
        done: dict[int, dict] = {}
        todo = list(jobs)
        for attempt in range(self.config.max_task_retries + 1):
            if group.num_remote_env_runners() == 0:
                for r in group.local_env_runner.run_tasks(todo):
                    done[r["task_index"]] = r
            else:
                if attempt > 0 or not group.healthy_env_runner_ids():
                    self._wait_for_runners()
                ids = group.healthy_env_runner_ids()
                shares = [todo[i :: len(ids)] for i in range(len(ids))]
                ids, shares = zip(*[(i, s) for i, s in zip(ids, shares) if s])
                fns = [lambda er, s=s: er.run_tasks(s) for s in shares]
                for out in group.foreach_env_runner(fns, local_env_runner=False, remote_worker_ids=list(ids)):
                    for r in out:
                        done[r["task_index"]] = r
            todo = [j for j in jobs if j.task_index not in done]
            if not todo:
                return [done[j.task_index] for j in jobs]
            logger.warning(
                "MAML: %d task(s) %s lost with a failed EnvRunner; retrying (%d/%d)",
                len(todo), [j.task_index for j in todo], attempt + 1, self.config.max_task_retries,
            )
            self._retried_tasks += len(todo)
        raise RuntimeError(
            f"MAML: tasks {[j.task_index for j in todo]} of iteration {jobs[0].iteration} could not be sampled after "
            f"{self.config.max_task_retries} retries"
        )

    def _wait_for_runners(self) -> None:
        """Bring failed runners back (RLlib's restart), sync θ to them; wait until at least one is healthy."""
        group = self.env_runner_group
        deadline = time.monotonic() + self.config.env_runner_restore_timeout_s + 60.0
        while True:
            self.restore_env_runners(group)
            if group.healthy_env_runner_ids():
                group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
                return
            if time.monotonic() > deadline:
                raise RuntimeError("MAML: no healthy EnvRunner came back to sample the remaining tasks")
            time.sleep(1.0)

    def meta_update(self, results: list[dict]) -> dict:
        n = len(results)
        group = self.learner_group
        if group.is_local:
            return group._learner.meta_update(results, num_tasks_total=n)
        # one shard per Learner (by task); LearnerGroup.foreach_learner sends the SAME function to all of them,
        # so the per-actor call goes through its actor manager
        k = len(group)
        shards = [results[i * n // k : (i + 1) * n // k] for i in range(k)]
        refs = group._worker_manager.foreach_actor(
            [lambda lr, s=s: lr.meta_update(s, num_tasks_total=n) for s in shards]
        )
        out = [r.get() for r in refs]
        return out[0]

    # --- metrics ----------------------------------------------------------------------------------------------
    def _log_iteration(self, results, learner_metrics, *, t_sample: float, t_update: float) -> None:
        m = self.metrics
        returns = np.array([r["returns"] for r in results])  # (tasks, K+1)
        for k in range(returns.shape[1]):
            m.log_value(("adapt", f"return_step_{k}"), float(returns[:, k].mean()), window=1)
        m.log_value(("adapt", "return_post"), float(returns[:, -1].mean()), window=1)
        m.log_value(("adapt", "gain"), float(returns[:, -1].mean() - returns[:, 0].mean()), window=1)
        m.log_value(("adapt", "return_post_std_tasks"), float(returns[:, -1].std()), window=1)
        losses = [x for r in results for x in r["inner_losses"]]
        if losses:
            m.log_value(("inner", "loss"), float(np.mean(losses)), window=1)
        for key, v in learner_metrics.items():
            m.log_value(("meta", key), float(v), window=1)
        steps = int(sum(r["env_steps"] for r in results))
        m.log_value(("env_steps", "this_iter"), steps, window=1)
        m.log_value(("env_steps", "discarded_this_iter"), int(sum(r["discarded_steps"] for r in results)), window=1)
        m.log_value(("env_steps", "lifetime"), steps, reduce="lifetime_sum")
        m.log_value((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), steps, reduce="lifetime_sum")
        m.log_value(("time", "sample_and_adapt_s"), t_sample, window=1)
        m.log_value(("time", "runner_sampling_s"), float(sum(r["time_sample_s"] for r in results)), window=1)
        m.log_value(("time", "runner_adapting_s"), float(sum(r["time_adapt_s"] for r in results)), window=1)
        m.log_value(("time", "meta_update_s"), t_update, window=1)
        m.log_value(("tasks", "retried_lifetime"), self._retried_tasks, window=1)

    # --- checkpoint: the task sampler's random state travels with the Algorithm --------------------------------
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["maml_task_rng"] = self._task_rng.bit_generator.state
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if "maml_task_rng" in state:
            self._task_rng.bit_generator.state = state["maml_task_rng"]
