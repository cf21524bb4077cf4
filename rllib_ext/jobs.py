"""The hand-off between the MAML loop, its EnvRunners and its Learners: ``TaskJob`` in, ``TaskResult`` out.

``MAML.training_step`` builds one ``TaskJob`` per task of the meta-batch (``inner_steps`` and ``episodes_per_task``
from its config); ``metarl evaluate`` builds its own (any trial, any number of inner steps). A runner answers each
with a ``TaskResult``; the Learners prepare tensors from its episodes without changing it (it is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metarl.rl import EpisodeBatch


@dataclass(frozen=True)
class TaskJob:
    """One task to sample, adapt on and sample again, as sent to a runner.

    Everything random is seeded from ``seed`` (support episodes of step k and the query episodes), so a job gives
    the same episodes on whichever runner runs it.
    """

    task: object  # the task family's task (``env.unwrapped.sample_tasks(...)`` element)
    task_index: int  # position in the meta-batch (results are matched back by it)
    iteration: int  # meta-iteration (-1 at evaluation); names the weights as "<iteration>/<k>"
    seed: int
    inner_steps: int  # K: support episodes with θ_0..θ_{K-1}, an inner step after each, query with θ_K
    episodes_per_task: int  # episodes per step (a multiple of the runner's sub-envs)
    return_params: bool = False  # tests: also return the adapted parameters θ_1..θ_K
    inner_lr: float | None = None  # α of this job's inner steps (None: the config's inner_lr; 0: θ unchanged)

    def __post_init__(self):
        for name, lo in (("inner_steps", 0), ("episodes_per_task", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"TaskJob.{name} = {v!r} must be an integer >= {lo}")
        lr = self.inner_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0
                               or lr == float("inf")):
            raise ValueError(f"TaskJob.inner_lr = {lr!r} must be a finite number >= 0, or None (the config's)")

    def lr(self, config_lr: float) -> float:
        """The α of this job's inner steps."""
        return config_lr if self.inner_lr is None else float(self.inner_lr)


@dataclass(frozen=True)
class TaskResult:
    """What a runner returns for one ``TaskJob``."""

    task_index: int
    task: np.ndarray  # the task as an array (``task.as_array()``)
    support: tuple[EpisodeBatch, ...]  # episodes with θ_0..θ_{K-1} (one batch per inner step)
    query: EpisodeBatch  # episodes with θ_K
    inner_losses: tuple[float, ...]  # the inner VPG loss at each step
    time_sample_s: float  # seconds spent sampling (all steps)
    time_adapt_s: float  # seconds spent in inner steps
    runner: int  # worker index of the runner that ran the job
    adapted_params: tuple[dict, ...] | None = None  # θ_1..θ_K on CPU when the job asked for them

    @property
    def batches(self) -> tuple[EpisodeBatch, ...]:
        """Episodes with θ_0, ..., θ_K."""
        return (*self.support, self.query)

    @property
    def returns(self) -> list[float]:
        """Mean episode return with θ_k, k = 0..K."""
        return [float(b.episode_returns().mean()) for b in self.batches]

    @property
    def env_steps(self) -> int:
        return sum(b.num_steps for b in self.batches)

    @property
    def success(self) -> list[float] | None:
        """Fraction of successful episodes with θ_k, k = 0..K; None if the task's env does not report success."""
        if any(b.success is None for b in self.batches):
            return None
        return [float(b.success.mean()) for b in self.batches]


def iteration_metrics(results: Sequence[TaskResult]) -> dict[str, float]:
    """The per-iteration metrics of a meta-batch (keys ``"group/name"``; see README's glossary)."""
    returns = np.array([r.returns for r in results])  # (tasks, K+1)
    out = {f"adapt/return_step_{k}": float(returns[:, k].mean()) for k in range(returns.shape[1])}
    out["adapt/return_post"] = float(returns[:, -1].mean())
    out["adapt/gain"] = float(returns[:, -1].mean() - returns[:, 0].mean())
    out["adapt/return_post_std_tasks"] = float(returns[:, -1].std())
    successes = [r.success for r in results]
    if all(s is not None for s in successes):
        success = np.array(successes)  # (tasks, K+1)
        out.update({f"adapt/success_step_{k}": float(success[:, k].mean()) for k in range(success.shape[1])})
    losses = [x for r in results for x in r.inner_losses]
    if losses:
        out["inner/loss"] = float(np.mean(losses))
    out["env_steps/this_iter"] = int(sum(r.env_steps for r in results))
    out["time/runner_sampling_s"] = float(sum(r.time_sample_s for r in results))
    out["time/runner_adapting_s"] = float(sum(r.time_adapt_s for r in results))
    return out


#: how each Learner metric combines across Learners (the rest: mean; for the ``time_*_s`` parts too, so that they
#: add up to a mean Learner's time: the max of each part would count one Learner's work and another's wait for it)
LEARNER_METRIC_REDUCE = {"logp_mismatch": max}


def reduce_learner_metrics(per_learner: Sequence[dict[str, float]]) -> dict[str, float]:
    """One metrics dict from every Learner's: max for ``logp_mismatch`` (it bounds every shard), mean otherwise
    (losses are already all-reduced over the Learners, so their mean is the value; the grad norm is the same)."""
    if not per_learner:
        return {}
    out = {}
    for key in per_learner[0]:
        values = [m[key] for m in per_learner]
        out[key] = float(LEARNER_METRIC_REDUCE.get(key, np.mean)(values))
    return out
