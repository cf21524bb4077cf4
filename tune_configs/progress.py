"""A concise progress table for Tune sweeps: one line per trial result instead of Tune's config dump.

    trial                               iter   before    after     gain     steps    time  held-out: before    after
    navigation-2d/gru/maml/s0              1   -35.21   -33.90    +1.31        80    2.1s           -36.02   -31.17*

"before"/"after" are the meta-batch's returns before and after the inner step(s) (training tasks); the held-out
columns are the trial's last evaluation on the family's test tasks (``eval/return_step_0`` and
``eval/return_post``), ``*`` on the iteration that ran it (between evaluations the last value is carried forward).
"""

from __future__ import annotations

from ray import tune

HEADER = (f"{'trial':<40} {'iter':>5} {'before':>9} {'after':>9} {'gain':>8} {'env steps':>10} {'time':>8}"
          f"  {'held-out: before':>16} {'after':>9}")


def trial_parts(config: dict) -> tuple[str, str, str, str]:
    """(task, backbone, method, ``s<seed>``) of a trial's (resolved) config: what names a trial."""
    method = config.get("method") or ("multitask" if config.get("inner_steps") == 0 else "maml")
    return str(config.get("task")), str(config.get("backbone")), method, f"s{config.get('seed')}"


def trial_label(config: dict) -> str:
    """``task/backbone/method/s<seed>``: a trial in the progress table."""
    return "/".join(trial_parts(config))


def trial_dirname(trial) -> str:
    """``task_backbone_method_s<seed>_<trial id>``: a trial's folder (Tune's ``trial_dirname_creator``)."""
    return "_".join([*trial_parts(trial.config), trial.trial_id])


def _get(result: dict, key: str, default=float("nan")):
    """``result["adapt"]["return_post"]`` or the flattened ``result["adapt/return_post"]``."""
    if key in result:
        return result[key]
    node = result
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def result_line(config: dict, result: dict) -> str:
    before = _get(result, "adapt/return_step_0")
    after = _get(result, "adapt/return_post")
    return (f"{trial_label(config):<40} {int(_get(result, 'training_iteration', 0)):>5d} {before:>9.2f} "
            f"{after:>9.2f} {after - before:>+8.2f} {int(_get(result, 'env_steps/lifetime', 0)):>10,d} "
            f"{_get(result, 'time_total_s', 0.0):>7.1f}s{_heldout(result)}")


def _heldout(result: dict) -> str:
    """The held-out columns: blank before the first evaluation, ``*`` on an iteration that evaluated."""
    pre, post = _get(result, "eval/return_step_0"), _get(result, "eval/return_post")
    if pre != pre and post != post:  # NaN: no evaluation yet (or evaluation off)
        return ""
    fresh = "*" if _get(result, "eval/fresh", 0.0) else " "
    return f"  {pre:>16.2f} {post:>9.2f}{fresh}"


class ProgressPrinter(tune.Callback):
    """Prints ``HEADER`` once, then one ``result_line`` per trial result and one line per finished/failed trial."""

    def __init__(self):  # no stored stream or function: Tune pickles its callbacks with the experiment
        self._header = False

    def _line(self, s: str) -> None:
        if not self._header:
            print(HEADER, flush=True)
            self._header = True
        print(s, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._line(result_line(trial.config, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(f"{trial_label(trial.config):<40} done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(f"{trial_label(trial.config):<40} ERROR (see {trial.path}/error.txt)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(f"{trial_label(trial.config):<40} failed; retrying from its last checkpoint")
