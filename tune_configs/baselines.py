"""The baseline-comparison sweep as data: backbones x task families x methods x seeds, built from ``MAMLConfig``.

One trial = one ``MAML`` run of ``MAMLConfig`` with these fields set by the grid::

    task       in --tasks          (metarl.tasks.names())
    backbone   in --backbones      (metarl.models.available(); default: all of them)
    method     in {"maml", "multitask", "rl2"}   multitask = .meta(inner_steps=0): θ trained on the same tasks
                                           without the inner step (the non-meta baseline); rl2 =
                                           .meta(inner_steps=0, memory="trial"): adapts in context only (RL²;
                                           held out with eval_inner_lr=0: θ unchanged, its trial goes on)
               x --memory {episode, trial}: maml and multitask with trial memory are the methods "maml+trial"
                                           and "multitask+trial" (.meta(memory="trial")); rl2 is trial memory
                                           by definition, so it is not crossed (``method_labels``)
    seed       in range(--seeds)   (weights and task sampler)
    width      = matched[task][backbone]: the width at which the backbone has ~``target_params`` parameters
                 (``metarl.models.build_matched``), so that backbones are compared at an equal size

The numbers that do not vary (the budget, meta-batch, runners, resources, checkpoints, evaluation, scheduler) come
from a ``SweepSize`` (``SIZES["smoke"]`` runs on a laptop in minutes, ``SIZES["full"]`` is the paper-sized run).

Fair by construction: every trial stops at the same training budget in env steps (``env_steps/lifetime``; MAML
samples K+1 batches per task and iteration, the multitask baseline one, so the baseline runs more iterations), and
every trial is ranked on the same held-out metric ``METRIC``: its current θ adapted ``eval_inner_steps`` inner
steps on the family's held-out test tasks (``rllib_ext.heldout``, the function of ``metarl evaluate``), the
multitask baseline included. Evaluation env steps are logged apart (``eval/env_steps_lifetime``).
``check_axes`` raises ``ValueError`` for bad axes before Ray starts; nothing here imports Ray at module level.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from metarl import models, tasks

METHODS = {"maml": None, "multitask": 0, "rl2": 0}  # method -> inner_steps (None: the size's inner_steps)
METHOD_MEMORY = {"maml": "episode", "multitask": "episode", "rl2": "trial"}  # method -> MAMLConfig.memory
MEMORIES = ("episode", "trial")  # the --memory axis (MAMLConfig.memory)
TRIAL_SUFFIX = "+trial"  # a method crossed with trial memory: "maml+trial", "multitask+trial"
DEFAULT_TASKS = ("halfcheetah-vel", "halfcheetah-dir", "ant-dir", "ant-goal", "humanoid-dir")
METRIC = "eval/return_post"  # held-out return after eval_inner_steps steps: what ASHA and the report rank by ("max")
FRESH = "eval/fresh"  # 1 on a result that holds a new evaluation (0: carried forward); ASHA's rungs fall on these
CLOCK = "env_steps/lifetime"  # the training budget every method gets alike (Tune stopper and ASHA's time_attr)


@dataclass(frozen=True)
class SweepSize:
    """Everything a sweep fixes across its trials (one docstring-comment per field)."""

    iterations: int | None  # meta-iterations per trial (a Tune stop on training_iteration); None: env_steps only
    meta_batch_size: int  # tasks per meta-iteration
    episodes_per_task: int  # episodes per task per inner step (multiple of num_envs_per_env_runner)
    num_env_runners: int  # remote EnvRunners per trial (0: sample in the trial's main process)
    num_envs_per_env_runner: int  # vectorised sub-envs per runner
    target_params: int  # parameter budget every backbone is matched to (build_matched)
    inner_steps: int = 1  # K of the "maml" method ("multitask" uses 0)
    outer_steps: int = 5  # Adam steps per meta-iteration
    horizon: int | None = None  # episode length; None = the task's default
    num_learners: int = 0  # remote Learners per trial (0: one Learner in the main process)
    num_cpus_for_main_process: float = 1.0  # CPUs of the trial's main process (the local Learner's too)
    num_cpus_per_env_runner: float = 1.0
    checkpoint_frequency: int = 10  # checkpoint every N iterations (and at the end): failed trials resume there
    max_failures: int = 3  # retries per trial, each from its last checkpoint
    scheduler: str = "fifo"  # "fifo" or "asha" (PerGroupASHA: per task family, on METRIC, clock env steps)
    grace_period: int = 1_000_000  # ASHA: env steps before a trial can be stopped (needs env_steps as max_t)
    meta_overrides: dict = field(default_factory=dict)  # extra MAMLConfig.meta(...) fields
    env_steps: int | None = None  # training budget per trial in env_steps/lifetime (a Tune stop), every method alike
    eval_every: int = 10  # held-out evaluation every N iterations, at the first and at the last (0: off)
    eval_tasks: int = 10  # held-out test tasks per evaluation
    eval_episodes: int | None = None  # episodes per test task per step (None: episodes_per_task)
    eval_inner_steps: int = 1  # K of the held-out evaluation (every method adapts, multitask too)


SIZES: dict[str, SweepSize] = {
    # 2 CPUs, minutes: each trial = 1 CPU (no remote actors), so two trials run side by side. 320 env steps = 2
    # MAML iterations (2 tasks x 2 episodes x 2 batches x 20 steps) = 4 multitask iterations
    "smoke": SweepSize(iterations=None, env_steps=320, meta_batch_size=2, episodes_per_task=2, num_env_runners=0,
                       num_envs_per_env_runner=2, target_params=600, outer_steps=1, horizon=20,
                       checkpoint_frequency=1, max_failures=1, scheduler="fifo", grace_period=160,
                       eval_every=1, eval_tasks=2),
    # a real but small comparison on a laptop (tens of minutes on 2 CPUs for a few backbones on navigation-2d):
    # 20 MAML iterations of navigation-2d (10 tasks x 10 episodes x 2 batches x 100 steps = 20,000 per iteration)
    "laptop": SweepSize(iterations=None, env_steps=400_000, meta_batch_size=10, episodes_per_task=10,
                        num_env_runners=0, num_envs_per_env_runner=10, target_params=5_000, outer_steps=5,
                        checkpoint_frequency=10, max_failures=1, scheduler="fifo", grace_period=100_000,
                        eval_every=5, eval_tasks=10),
    # the MuJoCo comparison on a 2-core machine: 1 CPU per trial (no remote actors), two trials side by side;
    # HalfCheetah (H=100): 20 tasks x 10 episodes x 2 x 100 = 40,000 env steps per MAML iteration, 5 M per trial
    "desktop": SweepSize(iterations=None, env_steps=5_000_000, meta_batch_size=20, episodes_per_task=10,
                         num_env_runners=0, num_envs_per_env_runner=10, target_params=50_000, outer_steps=5,
                         checkpoint_frequency=10, max_failures=3, scheduler="fifo", grace_period=1_000_000,
                         eval_every=10, eval_tasks=40, eval_inner_steps=1),
    # the comparison itself: per trial 1 main CPU + 8 EnvRunners x 1 CPU (+ GPUs from --gpus-per-trial).
    # 5 M env steps per trial (HalfCheetah, H=100: 40 tasks x 20 episodes x 2 x 100 = 160,000 per MAML iteration,
    # ~31 MAML / ~62 multitask iterations). FIFO, not ASHA: on the recorded HalfCheetahDir sweep (desktop size,
    # README "Results") per-family ASHA with this grace period kept 78% of trial pairs in order but stopped the
    # best trial, which rose only late; every trial runs its budget.
    # With --scheduler asha: PerGroupASHA, grace period 1 M env steps, rungs on evaluations.
    "full": SweepSize(iterations=None, env_steps=5_000_000, meta_batch_size=40, episodes_per_task=20,
                      num_env_runners=8, num_envs_per_env_runner=10, target_params=50_000, outer_steps=5,
                      checkpoint_frequency=5, max_failures=3, scheduler="fifo", grace_period=1_000_000,
                      eval_every=5, eval_tasks=40, eval_inner_steps=1),
}


def method_labels(methods: list[str], memories: list[str] = ("episode",)) -> list[str]:
    """The method axis of the grid: each method crossed with each memory (``"maml"``, ``"maml+trial"``, ...);
    rl2 once (it is trial memory by definition)."""
    out = []
    for m in methods:
        mems = ["trial"] if METHOD_MEMORY[m] == "trial" else list(memories)
        out += [m if METHOD_MEMORY[m] == mem else m + TRIAL_SUFFIX for mem in mems]
    return out


def method_settings(label: str) -> tuple[str, str]:
    """(method, memory) of a method label of ``method_labels`` (``"maml+trial"`` -> ("maml", "trial"))."""
    base = label.removesuffix(TRIAL_SUFFIX)
    return base, "trial" if label != base else METHOD_MEMORY[base]


def check_axes(*, backbones: list[str], task_names: list[str], seeds: int, methods: list[str],
               memories: list[str] = ("episode",)) -> None:
    """ValueError naming the argument, the bad value and what is allowed (called before Ray starts)."""
    for axis, noun, values, known in (("--backbones", "backbone", backbones, models.available()),
                                      ("--tasks", "task", task_names, tasks.names())):
        if not values:
            raise ValueError(f"{axis} is empty; choose from {known}")
        bad = [v for v in values if v not in known]
        if bad:
            raise ValueError(f"{axis}: unknown {noun}(s) {bad}; available: {known}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"--seeds = {seeds!r}: the number of seeds per cell must be an integer >= 1")
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise ValueError(f"--methods: unknown or empty {bad or methods}; allowed: {sorted(METHODS)}")
    bad = [m for m in memories if m not in MEMORIES]
    if not memories or bad:
        raise ValueError(f"--memory: unknown or empty {bad or list(memories)}; allowed: {list(MEMORIES)}")
    for axis, values in (("--backbones", backbones), ("--tasks", task_names), ("--methods", methods),
                         ("--memory", memories)):
        if len(set(values)) != len(values):
            raise ValueError(f"{axis} lists a value twice: {values}")


def matched_widths(*, backbones: list[str], task_names: list[str], target_params: int) -> dict[str, dict]:
    """{task: {backbone: {"width": w, "backbone_params": n}}}: the width whose backbone is closest to the budget
    (``metarl.models.registry.matched_width``, counted on the ``meta`` device).

    The module adds ``action_dim`` log σ parameters on top (reported by the trials as ``model/num_params``).
    """
    from metarl.models.registry import matched_width
    from rllib_ext.fields import backbone_num_params, task_io_dims

    out: dict[str, dict] = {}
    for task in task_names:
        obs_dim, out_dim = task_io_dims(task)
        out[task] = {}
        for b in backbones:
            w = matched_width(b, target_params=target_params, input_dim=obs_dim, output_dim=out_dim)
            n = backbone_num_params(b, width=w, input_dim=obs_dim, output_dim=out_dim, kwargs={})
            out[task][b] = {"width": w, "backbone_params": n}
    return out


def base_config(size: SweepSize, *, gpus_per_trial: float = 0.0):
    """The ``MAMLConfig`` shared by every trial (resources included; the grid fills in the axes).

    ``gpus_per_trial`` is the trial's total: the local Learner gets all of it, N remote Learners X/N each.
    """
    from rllib_ext.config import MAMLConfig
    from tune_configs.callbacks import ModelSizeCallback

    if gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial = {gpus_per_trial} must be >= 0")
    return (
        MAMLConfig()
        .meta(meta_batch_size=size.meta_batch_size, episodes_per_task=size.episodes_per_task,
              outer_steps=size.outer_steps, inner_steps=size.inner_steps, horizon=size.horizon,
              eval_every=size.eval_every, eval_tasks=size.eval_tasks, eval_episodes=size.eval_episodes,
              eval_inner_steps=size.eval_inner_steps, budget_env_steps=size.env_steps,
              budget_iterations=size.iterations, **size.meta_overrides)
        .env_runners(num_env_runners=size.num_env_runners, num_envs_per_env_runner=size.num_envs_per_env_runner,
                     num_cpus_per_env_runner=size.num_cpus_per_env_runner)
        .learners(num_learners=size.num_learners,
                  num_gpus_per_learner=gpus_per_trial / max(size.num_learners, 1))
        .resources(num_cpus_for_main_process=size.num_cpus_for_main_process)
        .callbacks(ModelSizeCallback)
    )


def param_space(size: SweepSize, *, backbones: list[str], task_names: list[str], seeds: int,
                methods: list[str] = ("maml", "multitask"), widths: dict | None = None,
                gpus_per_trial: float = 0.0, memories: list[str] = ("episode",)) -> dict:
    """The Tune ``param_space``: ``MAMLConfig.to_dict()`` with grids over task, backbone, method (x memory:
    ``method_labels``) and seed.

    ``width``, ``inner_steps`` and ``memory`` are ``tune.sample_from`` functions of the grid point (matched size,
    method label).
    """
    from ray import tune

    check_axes(backbones=list(backbones), task_names=list(task_names), seeds=seeds, methods=list(methods),
               memories=list(memories))
    methods = method_labels(list(methods), list(memories))
    if widths is None:
        widths = matched_widths(backbones=list(backbones), task_names=list(task_names),
                                target_params=size.target_params)
    table = {t: {b: widths[t][b]["width"] for b in backbones} for t in task_names}
    k, every = size.inner_steps, size.eval_every

    def steps_of(config) -> int:  # the method's inner steps K: it samples K + 1 phases per task and iteration
        return k if METHODS[method_settings(config["method"])[0]] is None else 0

    space = base_config(size, gpus_per_trial=gpus_per_trial).to_dict()
    space.update(
        task=tune.grid_search(list(task_names)),
        backbone=tune.grid_search(list(backbones)),
        method=tune.grid_search(methods),
        seed=tune.grid_search(list(range(seeds))),
        width=tune.sample_from(lambda config: table[config["task"]][config["backbone"]]),
        inner_steps=tune.sample_from(steps_of),
        # every method evaluates at the same env steps: one that samples fewer phases per iteration runs more
        # iterations, so it evaluates every (k + 1) / (K + 1) x eval_every of them
        eval_every=tune.sample_from(lambda config: every * (k + 1) // (steps_of(config) + 1)),
    )
    if any(method_settings(m)[1] != "episode" for m in methods):  # else the config's own memory field stays as is
        space["memory"] = tune.sample_from(lambda config: method_settings(config["method"])[1])
    if "rl2" in methods:  # RL² adapts in context: held out, θ stays unchanged for the query phase
        own = space.get("eval_inner_lr")
        space["eval_inner_lr"] = tune.sample_from(lambda config: 0.0 if config["method"] == "rl2" else own)
    return space


def with_size(size: SweepSize, **changes) -> SweepSize:
    """A copy of ``size`` with some fields changed (e.g. ``iterations`` from the command line)."""
    return dataclasses.replace(size, **changes)


def stop_criteria(size: SweepSize) -> dict:
    """Tune's stop: ``env_steps/lifetime >= env_steps`` and/or ``training_iteration >= iterations``."""
    stop = {CLOCK: size.env_steps} if size.env_steps is not None else {}
    if size.iterations is not None:
        stop["training_iteration"] = size.iterations
    if not stop:
        raise ValueError("the sweep needs a budget: --env-steps N and/or --iterations N (both are None)")
    return stop


def make_scheduler(size: SweepSize):
    """FIFO, or ``PerGroupASHA``: one ASHA per task family on ``METRIC``, clock ``CLOCK`` (env steps), acting
    only on fresh evaluations; its max_t is the env-step budget."""
    from ray.tune.schedulers import FIFOScheduler

    from tune_configs.schedulers import PerGroupASHA

    if size.scheduler == "fifo":
        return FIFOScheduler()
    if size.scheduler != "asha":
        raise ValueError(f"scheduler = {size.scheduler!r}; allowed: 'fifo' or 'asha'")
    if size.env_steps is None or not size.eval_every:
        raise ValueError("scheduler 'asha' needs an env-step budget (--env-steps, its max_t) and held-out "
                         f"evaluation (eval_every > 0); got env_steps = {size.env_steps}, eval_every = "
                         f"{size.eval_every}")
    return PerGroupASHA(group_by="task", time_attr=CLOCK, max_t=size.env_steps,
                        grace_period=min(size.grace_period, size.env_steps), fresh_attr=FRESH)
