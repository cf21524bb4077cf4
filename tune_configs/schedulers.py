"""Early stopping that compares like with like: one ASHA per task family, on a metric every trial has.

A single ASHA over a whole sweep ranks every trial against every other: a family whose returns are 100x larger
(HalfCheetah vs Navigation2D) stops the other family's trials at the first rung, for reasons that have nothing to do
with their quality. ``PerGroupASHA`` is one Tune ``TrialScheduler`` (Tune runs one scheduler per experiment) that
routes each trial to its own ASHA by ``trial.config[group_by]`` (default: the task family), so a trial is only ever
compared with trials of the same family. Its clock (``time_attr``, ``max_t``, ``grace_period``) is meant to be env
steps (``env_steps/lifetime``), so methods that sample different amounts per iteration (MAML vs the multi-task
baseline) meet the rungs at the same budget.

A result is acted on only when it carries the metric as a finite number (and, with ``fresh_attr``, when that
result is a fresh evaluation): ASHA itself lets a NaN or a stale carried-forward value pass a rung, which silently
disables it. Other results continue.
"""

from __future__ import annotations

import math
import pickle

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler


class PerGroupASHA(FIFOScheduler):
    """One ``AsyncHyperBandScheduler`` per value of ``trial.config[group_by]``; the same settings for each."""

    def __init__(self, *, group_by: str = "task", time_attr: str = "env_steps/lifetime", metric: str | None = None,
                 mode: str | None = None, max_t: float, grace_period: float, reduction_factor: float = 4,
                 fresh_attr: str | None = None):
        super().__init__()
        if not 0 < grace_period <= max_t:
            raise ValueError(f"PerGroupASHA: grace_period = {grace_period} must be in (0, max_t = {max_t}]")
        if reduction_factor <= 1:
            raise ValueError(f"PerGroupASHA: reduction_factor = {reduction_factor} must be > 1")
        self._group_by = group_by
        self._settings = dict(time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                              reduction_factor=reduction_factor, brackets=1)
        self._metric, self._mode = metric, mode
        self._fresh_attr = fresh_attr
        self._groups: dict[str, AsyncHyperBandScheduler] = {}
        self._group_of: dict[str, str] = {}  # trial id -> group

    # --- Tune's scheduler API --------------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(f"PerGroupASHA needs a metric and mode 'min'/'max' (got {self._metric!r}, {self._mode!r})")
        group = str(trial.config.get(self._group_by))
        self._group_of[trial.trial_id] = group
        self._scheduler(group).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._acts_on(result):
            return TrialScheduler.CONTINUE
        return self._scheduler_of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        sched = self._scheduler_of(trial)
        if self._acts_on(result or {}):
            sched.on_trial_complete(tune_controller, trial, result)
        else:
            sched.on_trial_remove(tune_controller, trial)
        self._group_of.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if trial.trial_id in self._group_of:
            self._scheduler_of(trial).on_trial_remove(tune_controller, trial)
            self._group_of.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "PerGroupASHA by {}: {}".format(
            self._group_by, "; ".join(f"{g}: {s.debug_string()}" for g, s in sorted(self._groups.items())))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # --- helpers -------------------------------------------------------------------------------------------
    def _scheduler(self, group: str) -> AsyncHyperBandScheduler:
        if group not in self._groups:
            self._groups[group] = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode, **self._settings)
        return self._groups[group]

    def _scheduler_of(self, trial) -> AsyncHyperBandScheduler:
        group = self._group_of.get(trial.trial_id)
        if group is None:  # restored experiment: trials were added before the save
            group = str(trial.config.get(self._group_by))
            self._group_of[trial.trial_id] = group
            self._scheduler(group).on_trial_add(None, trial)
        return self._groups[group]

    def _acts_on(self, result: dict) -> bool:
        value = result.get(self._metric)
        clock = result.get(self._settings["time_attr"])
        if not _finite(value) or not _finite(clock):
            return False
        return self._fresh_attr is None or bool(result.get(self._fresh_attr))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def replay(scheduler, runs: dict[str, tuple[dict, list[dict]]], *, clock: str = "env_steps/lifetime") -> dict[str, int]:
    """Replay recorded (flat) results through ``scheduler`` as if the trials had run side by side, merged in
    ``clock`` order: {trial name: index of the result at which the scheduler stops it (the last one if never)}.

    Measures, on a sweep recorded with FIFO, what early stopping would have changed (``metarl report
    --asha-grace``). ``scheduler`` needs its metric and mode set (``PerGroupASHA(metric=..., mode=...)``).
    """
    from types import SimpleNamespace

    trials = {name: SimpleNamespace(trial_id=name, config=config) for name, (config, _) in runs.items()}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    events = sorted((row[clock], name, i) for name, (_, rows) in runs.items() for i, row in enumerate(rows)
                    if _finite(row.get(clock)))
    stopped: dict[str, int] = {}
    for _, name, i in events:
        if name not in stopped and scheduler.on_trial_result(None, trials[name], runs[name][1][i]) == TrialScheduler.STOP:
            stopped[name] = i
    return {name: stopped.get(name, len(rows) - 1) for name, (_, rows) in runs.items()}
