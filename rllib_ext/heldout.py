"""Held-out evaluation, ONE implementation for ``metarl evaluate`` and for the evaluation inside every MAML trial.

For each of the family's test tasks (``env.unwrapped.test_tasks(num_tasks, seed=test_seed)``, fixed across runs)
one ``TaskJob`` with ``inner_steps = K``, ``episodes_per_task = episodes`` and ``seed = derive_seed(seed, i)``
(task i): the runner samples with θ, adapts, ..., samples with θ_K, exactly as in training. Who runs the jobs is
the caller's: ``metarl evaluate`` one in-process runner, ``MAML.evaluate_heldout`` its EnvRunners through
``MAML.run_jobs`` (each runner its share of the tasks). The same jobs on runners with the same number of sub-envs
give the same episodes, so the two agree to the last bit (tests/test_fair.py).

With trial memory (``trial_envs`` = the runner's sub-envs) each record also keeps ``phase_returns`` [k][j]: the
return of the j-th episode (j = 1..Q, Q = episodes / sub-envs) within phase k, mean over the sub-envs (each
sub-env runs its own trial, its episodes in order): the in-context curve, and ``heldout_metrics`` adds
``return_step_k_episode_j`` (mean over tasks). Episode memory's records and metrics are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from metarl import tasks
from metarl.sampler import derive_seed
from rllib_ext.jobs import TaskJob, TaskResult


def heldout_tasks(task: str, task_options: dict, *, num_tasks: int, test_seed: int) -> list:
    """The family's held-out test tasks (an independent stream from the training tasks)."""
    return tasks.make(task, **task_options).unwrapped.test_tasks(num_tasks, seed=test_seed)


def heldout_jobs(test_tasks: Sequence, *, inner_steps: int, episodes: int, seed: int,
                 inner_lr: float | None = None) -> list[TaskJob]:
    """One job per test task; task i's episodes are seeded by ``derive_seed(seed, i)``; ``inner_lr``: the α of
    the inner steps (None: the config's; 0: θ unchanged, the query phase continues a trial in context)."""
    return [TaskJob(task=t, task_index=i, iteration=-1, seed=derive_seed(seed, i), inner_steps=inner_steps,
                    episodes_per_task=episodes, inner_lr=inner_lr) for i, t in enumerate(test_tasks)]


def episode_success(batches) -> list[list[float]] | None:
    """Per step k, per episode: 1.0 if ``info["success"]`` was true at some step (None without success)."""
    if any(b.success is None for b in batches):
        return None
    return [b.success.tolist() for b in batches]


def phase_returns(returns: Sequence[float], num_envs: int) -> list[float]:
    """Returns of one phase in batch order (sub-env i's Q episodes in rows i*Q..(i+1)*Q-1) -> [Q]: the mean over
    sub-envs of each one's j-th episode (j = 1..Q, in the order the trial ran them)."""
    r = np.asarray(returns, dtype=float)
    if num_envs < 1 or r.size % num_envs:
        raise ValueError(f"phase_returns(): {r.size} episodes do not split over num_envs = {num_envs} sub-envs")
    return r.reshape(num_envs, -1).mean(0).tolist()  # (n, Q) -> (Q,)


def per_task_record(result: TaskResult, *, trial_envs: int | None = None) -> dict:
    """What is kept of one test task: its returns [k][episode], env steps [k] and success [k][episode]; with trial
    memory (``trial_envs`` sub-envs) also ``phase_returns`` [k][j] (``phase_returns``)."""
    batches = result.batches
    record = {
        "task": np.asarray(result.task).tolist(),
        "returns": [b.episode_returns().tolist() for b in batches],
        "env_steps": [b.num_steps for b in batches],
        "success": episode_success(batches),
    }
    if trial_envs is not None:
        record["phase_returns"] = [phase_returns(r, trial_envs) for r in record["returns"]]
    return record


def run_heldout(run_jobs: Callable[[list[TaskJob]], list[TaskResult]], *, task: str, task_options: dict,
                num_tasks: int, test_seed: int, inner_steps: int, episodes: int, seed: int,
                trial_envs: int | None = None, inner_lr: float | None = None) -> list[dict]:
    """Adapt on every held-out test task with ``run_jobs``; one ``per_task_record`` per task, in task order.
    ``trial_envs``: the runners' sub-envs when they run trial memory (adds ``phase_returns``); None: episode memory.
    ``inner_lr``: ``heldout_jobs``'."""
    jobs = heldout_jobs(heldout_tasks(task, task_options, num_tasks=num_tasks, test_seed=test_seed),
                        inner_steps=inner_steps, episodes=episodes, seed=seed, inner_lr=inner_lr)
    results = {r.task_index: r for r in run_jobs(jobs)}
    return [per_task_record(results[j.task_index], trial_envs=trial_envs) for j in jobs]


def trial_envs_of(config) -> int | None:
    """``run_heldout``'s ``trial_envs`` for a ``MAMLConfig``: its sub-envs per runner with trial memory, else None."""
    return config.num_envs_per_env_runner if config.memory == "trial" else None


def heldout_metrics(per_task: list[dict]) -> dict[str, float]:
    """The ``eval/...`` metrics of one evaluation (README's glossary): ``return_step_k`` (mean over tasks x
    episodes), ``return_post`` (k = K), ``success_step_k``, ``env_steps`` and ``task_return/<i>`` (task i's mean
    return with θ_K: the per-task values the report's bootstrap interval resamples); with trial memory also
    ``return_step_k_episode_j`` (the j-th episode within phase k, j = 1..Q, mean over tasks and sub-envs)."""
    task_means = np.array([[np.mean(r) for r in t["returns"]] for t in per_task])  # (tasks, K+1)
    out = {f"return_step_{k}": float(task_means[:, k].mean()) for k in range(task_means.shape[1])}
    out["return_post"] = float(task_means[:, -1].mean())
    if per_task[0]["success"] is not None:
        rates = np.array([[np.mean(s) for s in t["success"]] for t in per_task])
        out.update({f"success_step_{k}": float(rates[:, k].mean()) for k in range(rates.shape[1])})
    out["env_steps"] = int(sum(sum(t["env_steps"]) for t in per_task))
    out.update({f"task_return/{i}": float(v) for i, v in enumerate(task_means[:, -1])})
    if "phase_returns" in per_task[0]:
        curve = np.array([t["phase_returns"] for t in per_task]).mean(0)  # (K+1, Q): mean over tasks
        out.update({f"return_step_{k}_episode_{j + 1}": float(v) for k, row in enumerate(curve)
                    for j, v in enumerate(row)})
    return out
