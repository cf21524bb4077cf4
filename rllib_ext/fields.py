"""The table of ``MAMLConfig`` fields: name, type, default, meaning and what is allowed, in ONE place.

From ``FIELDS`` come ``MAMLConfig``'s defaults and the docstring of ``MAMLConfig.meta``, the flags of
``metarl train`` / ``benchmarks/run_mujoco.py`` (``metarl.apps.flags``, each help shows the default) and the
validation run by ``MAMLConfig.validate()`` before RLlib sees the config (and so before any actor starts):

- ``check_field``: the type (a bool is a bool, an int an int, a float finite), the range or the choices, and
  ``None`` only where the row documents what it means. No row has a -1 sentinel, and -1 itself is refused
  everywhere: RLlib's ``AlgorithmConfig.get_state`` drops every config value equal to -1 (its deprecated-value
  marker), so a -1 would silently become the default in a restored run or a remote runner.
- ``check_task_options`` / ``check_backbone_kwargs``: option names against the task family's constructor and
  the backbone factory's signature.
- ``size_estimate``: the memory of the meta-batch's episode tensors, of backpropagation through the horizon and
  of the parameters (order of magnitude), refused when above the machine's memory.
- ``check_gpus``: GPUs asked for but absent fail here, not in Ray's resource wait.

Only ``metarl`` (torch, gymnasium) and the standard library are imported here; ``torch`` and the backbones lazily,
so that ``metarl train --help`` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metarl import tasks

#: RLlib's DEPRECATED_VALUE: config values equal to it are dropped when RLlib saves a config
RLLIB_DROPPED = -1
#: RLlib's builder methods that set the outer-loop fields (the MAML fields are set by ``MAMLConfig.meta``)
BUILDERS = ("meta", "training", "env_runners", "learners", "debugging")


def _backbones() -> list[str]:
    from metarl import models

    return models.available()


@dataclass(frozen=True)
class Field:
    """One config field. ``kind`` is bool, int, float, str or dict; ``lo``/``hi`` bound numbers (``*_open``:
    the bound itself is excluded); ``choices`` lists the allowed strings; ``none`` says what ``None`` means
    (``None`` is refused when it is empty); ``builder`` is the ``MAMLConfig`` method that sets the field;
    ``flag`` the CLI flag (default ``--`` + the name with dashes)."""

    name: str
    kind: type
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Callable[[], list[str]] | None = None
    none: str = ""
    builder: str = "meta"
    flag: str = ""
    choices_doc: str = ""  # the choices in words, for README (where a registry's list would go stale)

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse attribute of the flag."""
        return self.option[2:].replace("-", "_")

    def shown_default(self) -> str:
        if self.default is None:
            return f"None = {self.none}"
        if self.kind is dict:
            return json.dumps(self.default)
        return str(self.default)

    def allowed(self, *, doc: bool = False) -> str:
        """What the field accepts, in words (the end of every error message about it; ``doc``: for README)."""
        if self.choices is not None:
            text = self.choices_doc if doc and self.choices_doc else f"one of {self.choices()}"
        elif self.kind in (bool, str, dict):
            text = {bool: "True or False (a bool, not a string or number)", str: "a string",
                    dict: "a dict of keyword arguments"}[self.kind]
        else:
            text = ("an integer" if self.kind is int else "a finite number") + self._range()
        return text + (f", or None ({self.none})" if self.none else "")

    def _range(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return (" " + " and ".join(parts)) if parts else ""


def _meta(name, kind, default, help, **kw) -> Field:
    return Field(name, kind, default, help, **kw)


FIELDS: tuple[Field, ...] = (
    # --- the MAML fields, set with MAMLConfig.meta(...) ---
    _meta("task", str, "halfcheetah-dir", "task family (metarl.tasks.names())", choices=tasks.names,
          choices_doc="a name of metarl.tasks.names()"),
    _meta("task_options", dict, {}, "keyword arguments of the task family's constructor, e.g. "
          '{"velocity_range": [0, 3]} (checked against its signature; the episode length is `horizon`)'),
    _meta("horizon", int, None, "episode length: the TimeLimit of every env", lo=1,
          none="the task family's registered horizon"),
    _meta("backbone", str, "mlp", "policy backbone (metarl.models.available()); a top-level field so Tune can "
          "grid-search it", choices=_backbones, choices_doc="a name of metarl.models.available()"),
    _meta("width", int, 64, "backbone width (hidden size)", lo=1),
    _meta("backbone_kwargs", dict, {}, "backbone-specific keyword arguments, e.g. "
          '{"num_layers": 3} (checked against the backbone\'s signature)'),
    _meta("init_log_std", float, 0.0, "initial log σ of the Gaussian policy"),
    _meta("inner_lr", float, 0.1, "α of the inner VPG step", lo=0, lo_open=True),
    _meta("inner_steps", int, 1, "inner steps K (0 = the non-meta multi-task baseline)", lo=0),
    _meta("meta_batch_size", int, 20, "tasks per meta-iteration", lo=1),
    _meta("episodes_per_task", int, 10, "episodes per task per inner step (a multiple of "
          "num_envs_per_env_runner)", lo=1),
    _meta("first_order", bool, False, "drop the second-order term of the meta-gradient (first-order MAML)"),
    _meta("first_order_until", int, None, "first order while the run's training env steps (env_steps/lifetime, "
          "this iteration's included) are below this, second order from there on: first order learns faster early, "
          "and later its steps stop improving the exact objective (BENCHMARKS.md, HalfCheetahDir to 30 M); needs "
          "first_order=False", lo=1, none="first_order decides throughout"),
    _meta("inner_objective", str, "vpg", "inner loss: 'vpg' (the MAML paper's policy-gradient surrogate) or 'lvc' "
          "(ProMP's low-variance curvature: same inner step, its Hessian adds the sampling-distribution term)",
          choices=lambda: ["vpg", "lvc"]),
    _meta("memory", str, "episode", "recurrent memory: 'episode' (every episode starts from the initial state) or "
          "'trial' (per sub-env, one task's support and query phases are one trial: the state runs on across "
          "episodes and phases, reset at each task job; with inner_steps=0 this is RL²)",
          choices=lambda: ["episode", "trial"]),
    _meta("trial_inputs", bool, None, "the backbone also reads RL²'s previous action, previous reward and "
          "episode-start flag (trial memory only)", none="on with memory='trial'"),
    _meta("trial_returns", bool, None, "returns-to-go run across episode boundaries within a phase, the "
          "baseline fitted over each sub-env's phase (trial memory only); off: per-episode returns",
          none="on with memory='trial'"),
    _meta("outer_steps", int, 5, "Adam steps on the clipped surrogate per meta-iteration", lo=1),
    _meta("clip_param", float, 0.3, "ProMP surrogate clip ε", lo=0, hi=1, lo_open=True, hi_open=True),
    _meta("outer_kl_coeff", float, 0.0, "coefficient of a KL penalty on the outer step: the outer loss adds "
          "outer_kl_coeff · KL(π_θ'_old ‖ π_θ') of the post-update policy on the query episodes (mean over steps "
          "and tasks; θ'_old: before the meta-update's first step; MAML-TRPO's trust-region quantity, where ProMP's "
          "penalty takes the pre-update policy); 0 = off", lo=0),
    _meta("outer_target_kl", float, None, "trust region by early stopping: the meta-update skips its remaining "
          "outer steps once the mean KL(π_θ'_old ‖ π_θ') on the query exceeds it (the step that crossed it is kept; "
          "meta/outer_steps_run counts the steps taken)", lo=0, lo_open=True, none="off"),
    _meta("outer_monotone", bool, False, "keep an outer step only if the clipped meta-objective, measured after it "
          "at θ'(θ) (exact also with first_order), is not worse than before it; else shorten it (outer_backtracks) "
          "or undo it (θ and Adam's state), and end the meta-update. One more pass per meta-update, one per "
          "shortening (meta/outer_step_kept)"),
    _meta("outer_backtracks", int, 5, "with outer_monotone: a step that made the objective worse is tried at 1/2, "
          "1/4, ... of its length, this many times, before it is undone (a line search, as TRPO's); 0: undone at "
          "once", lo=0),
    _meta("normalize_advantages", bool, True, "normalise the advantages of each task's episodes"),
    _meta("max_seq_len", int, None, "BPTT length (must be >= horizon)", lo=1, none="the horizon"),
    _meta("dtype", str, "float32", "parameter dtype (float64 for exact-gradient checks)",
          choices=lambda: ["float32", "float64"]),
    _meta("task_seed", int, None, "seed of the task sampler", lo=0, none="the config's seed"),
    _meta("max_task_retries", int, 3, "re-run a dead runner's tasks on healthy runners this many times, "
          "then fail", lo=0),
    # --- held-out evaluation inside the run (rllib_ext.heldout: the same as metarl evaluate) ---
    _meta("eval_every", int, 0, "held-out evaluation every N meta-iterations, also at the first and at the last "
          "(the one reaching budget_env_steps / budget_iterations); 0 = off. Logs eval/... (not in env_steps)", lo=0),
    _meta("eval_tasks", int, 10, "held-out test tasks per evaluation (test_tasks(n, seed=eval_test_seed))", lo=1),
    _meta("eval_episodes", int, None, "episodes per test task per step (a multiple of num_envs_per_env_runner)",
          lo=1, none="episodes_per_task"),
    _meta("eval_inner_steps", int, 1, "inner steps K of the evaluation (every method adapts, multitask too)", lo=0),
    _meta("eval_inner_lr", float, None, "α of the evaluation's inner steps; 0: θ unchanged, so the query phase "
          "continues the trial in context (RL²'s adaptation: the sweep's rl2 uses it; also `metarl evaluate`'s "
          "default)", lo=0, none="inner_lr"),
    _meta("eval_test_seed", int, 1, "seed of the held-out test-task set (metarl evaluate --test-seed)", lo=0),
    _meta("eval_seed", int, 0, "seed of the evaluation episodes (metarl evaluate --seed)", lo=0),
    _meta("budget_env_steps", int, None, "the run's training budget in env_steps/lifetime (metarl sweep "
          "--env-steps stops the trial there): the iteration reaching it is evaluated", lo=1, none="no env-step budget"),
    _meta("budget_iterations", int, None, "the run's last iteration (metarl sweep --iterations): evaluated", lo=1,
          none="no iteration budget"),
    # --- the outer loop and resources: RLlib's own fields, validated the same way ---
    Field("lr", float, 1e-3, "Adam lr of the meta-update", lo=0, lo_open=True, builder="training",
          flag="--outer-lr"),
    Field("grad_clip", float, 1.0, "gradient-norm clip of the meta-update", lo=0, lo_open=True,
          none="no clipping", builder="training"),
    Field("gamma", float, 0.99, "discount factor", lo=0, hi=1, lo_open=True, builder="training"),
    Field("num_env_runners", int, 0, "remote EnvRunners (0: sample in the driver)", lo=0,
          builder="env_runners"),
    Field("num_envs_per_env_runner", int, 10, "vectorised sub-envs per EnvRunner", lo=1,
          builder="env_runners", flag="--num-envs-per-runner"),
    Field("num_learners", int, 0, "remote Learners (0: one Learner in the driver)", lo=0, builder="learners"),
    Field("num_gpus_per_learner", float, 0.0, "GPUs per Learner (fractions share a GPU)", lo=0,
          builder="learners"),
    Field("seed", int, 0, "seed of the weights and (unless task_seed) of the task sampler", lo=0,
          builder="debugging"),
)
BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
META_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.builder == "meta")


def defaults(builder: str | None = None) -> dict[str, Any]:
    """{name: default} of the fields (of one builder); dicts are fresh copies."""
    return {f.name: (dict(f.default) if isinstance(f.default, dict) else f.default)
            for f in FIELDS if builder in (None, f.builder)}


def meta_doc() -> str:
    """The docstring of ``MAMLConfig.meta``: every MAML field with its type, default and meaning."""
    lines = ["Set MAML fields (unknown names raise ValueError); ``validate()`` checks them. Fields::", ""]
    for f in META_FIELDS:
        lines.append(f"    {f.name} ({f.kind.__name__}, default {f.shown_default()}): {f.help}")
    lines += ["", "The outer loop and resources are RLlib's own fields, validated by the same table: "
              + ", ".join(f"``{f.builder}({f.name}=...)`` ({f.shown_default()})" for f in FIELDS
                          if f.builder != "meta") + "."]
    return "\n".join(lines)


def markdown_table() -> str:
    """The table as README shows it (a test keeps README equal to this)."""
    rows = ["| field | flag | default | meaning | allowed |", "|---|---|---|---|---|"]
    for f in FIELDS:
        setter = "" if f.builder == "meta" else f" (`.{f.builder}`)"
        rows.append(f"| `{f.name}`{setter} | `{f.option}` | `{f.shown_default()}` | {f.help} | {f.allowed(doc=True)} |")
    return "\n".join(rows)


# --- checks ---------------------------------------------------------------------------------------------------------
def fail(name: str, value: Any, allowed: str) -> None:
    """Raise the one error format: the field, its flag, the value and what is allowed."""
    f = BY_NAME.get(name)
    flag = f" (flag {f.option})" if f is not None else ""
    raise ValueError(f"MAMLConfig.{name} = {value!r}{flag} is invalid: {allowed}")


def _type_ok(kind: type, v: Any) -> bool:
    if kind is bool:
        return isinstance(v, bool) or type(v).__name__ == "bool_"  # numpy's bool too
    if kind is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if kind is float:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, kind)


def _in_range(f: Field, v: float) -> bool:
    lo_ok = f.lo is None or (v > f.lo if f.lo_open else v >= f.lo)
    hi_ok = f.hi is None or (v < f.hi if f.hi_open else v <= f.hi)
    return lo_ok and hi_ok


def check_field(f: Field, v: Any) -> None:
    """ValueError unless ``v`` is a value ``f`` allows."""
    if v is None:
        if not f.none:
            fail(f.name, v, f.allowed())
        return
    if not _type_ok(f.kind, v):
        fail(f.name, v, f.allowed())
    if f.choices is not None and v not in f.choices():
        fail(f.name, v, f.allowed())
    if f.kind in (int, float):
        if v == RLLIB_DROPPED:
            fail(f.name, v, f"{f.allowed()}; -1 is not a sentinel here (RLlib drops config values equal to -1 "
                            "when it saves a config, so the run would silently use the default)")
        if not _in_range(f, v):
            fail(f.name, v, f.allowed())
    if f.kind is dict and not all(isinstance(k, str) for k in v):
        fail(f.name, v, "a dict whose keys are option names (strings)")


def check_fields(config) -> None:
    """Every field of the table on ``config`` (type, range, choices)."""
    for f in FIELDS:
        check_field(f, getattr(config, f.name))


def _named_params(fn) -> tuple[set[str], bool]:
    """(keyword names, whether ``**kwargs`` is accepted) of a callable's signature."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def task_option_names(task: str) -> set[str]:
    """The keyword arguments the family's env accepts: its constructor's, and those of the base classes its
    ``**kwargs`` reach (e.g. gymnasium's ``HalfCheetahEnv`` and ``MujocoEnv``)."""
    module, cls_name = tasks.FAMILIES[task][1].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        got, more = _named_params(klass.__init__)
        names |= got
        if not more:
            break
    return names


def check_task_options(task: str, options: dict) -> None:
    if "max_episode_steps" in options:
        h = options["max_episode_steps"]
        fail("task_options", options, f"the episode length is the field `horizon` (.meta(horizon={h!r}), "
                                      f"--horizon {h}), not a task option")
    allowed = task_option_names(task)
    unknown = sorted(set(options) - allowed)
    if unknown:
        fail("task_options", options, f"unknown option(s) {unknown} for task {task!r}; allowed: {sorted(allowed)}")


def check_backbone_kwargs(backbone: str, kwargs: dict) -> None:
    from metarl.models import registry

    names, more = _named_params(registry._factory(backbone))
    names -= {"input_dim", "output_dim", "width"}
    bad = sorted(k for k in kwargs if k in {"input_dim", "output_dim", "width"} or (k not in names and not more))
    if bad:
        fail("backbone_kwargs", kwargs, f"unknown option(s) {bad} for backbone {backbone!r}; allowed: {sorted(names)}"
                                        + (" (and those its docstring lists)" if more else ""))


# --- sizes ------------------------------------------------------------------------------------------------------------
def io_dims(observation_space, action_space) -> tuple[int, int]:
    """(observation dim, policy output dim) as ``MetaRLModule`` sees the spaces (Discrete: n logits)."""
    out = int(action_space.n) if hasattr(action_space, "n") else int(action_space.shape[0])
    return int(observation_space.shape[0]), out


_DIMS: dict[tuple, tuple[int, int]] = {}


def task_io_dims(task: str, *, horizon: int | None = None, options: dict | None = None) -> tuple[int, int]:
    """(observation dim, policy output dim) of the family's env made with these options (cached per process).

    Making the env also checks the option values; a failure is a ValueError naming ``task_options``."""
    options = dict(options or {})
    key = (task, horizon, repr(sorted(options.items())))
    if key not in _DIMS:
        try:
            env = tasks.make(task, horizon=horizon, **options)
        except Exception as e:  # noqa: BLE001 - any failure to make the env means the same: bad options
            raise ValueError(f"MAMLConfig.task_options = {options!r}, horizon = {horizon!r} (flags --task-options, "
                             f"--horizon) are invalid: the env of task {task!r} rejects them: {e}") from e
        try:
            _DIMS[key] = io_dims(env.observation_space, env.action_space)
        finally:
            env.close()
    return _DIMS[key]


def backbone_num_params(backbone: str, *, width: int, input_dim: int, output_dim: int, kwargs: dict) -> int:
    """Parameters of the backbone, counted on the ``meta`` device (no memory, any width)."""
    import torch

    from metarl import models

    try:
        with torch.device("meta"):
            net = models.build(backbone, input_dim=input_dim, output_dim=output_dim, width=width, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"MAMLConfig.width = {width!r}, backbone_kwargs = {kwargs!r} (flags --width, "
                         f"--backbone-kwargs) are invalid: backbone {backbone!r} rejects them: {e}") from e
    return models.num_params(net)


#: activations kept per step, per unit of width, for backpropagation through the episode (order of magnitude:
#: a GRU keeps ~6 gate/candidate vectors per step; the second-order graph holds a few more)
ACTIVATIONS_PER_WIDTH = 8


def size_estimate(config, *, obs_dim: int, act_dim: int, num_params: int) -> dict[str, int]:
    """Bytes the Learner holds at the meta-update (order of magnitude).

    episodes = meta_batch_size x episodes_per_task x (inner_steps + 1) whole episodes of ``horizon`` steps::

        episode tensors  episodes x horizon x (obs_dim + act_dim + 5 columns) x bytes
        BPTT             episodes x horizon x width x ACTIVATIONS_PER_WIDTH x bytes
        parameters       num_params x bytes x (4 + meta_batch_size x inner_steps)   θ, grad, Adam m, v, θ_k per task
    """
    nbytes = 8 if config.dtype == "float64" else 4
    h = horizon_of(config)
    episodes = config.meta_batch_size * config.episodes_per_task * (config.inner_steps + 1)
    return {
        "episode tensors": episodes * h * (obs_dim + act_dim + 5) * nbytes,
        "BPTT": episodes * h * config.width * ACTIVATIONS_PER_WIDTH * nbytes,
        "parameters": num_params * nbytes * (4 + config.meta_batch_size * config.inner_steps),
    }


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.3g} GiB"


def check_size(config, *, memory: int | None = None) -> dict[str, int]:
    """Refuse a config whose ``size_estimate`` exceeds the machine's memory; returns the estimate."""
    obs_dim, act_dim = task_io_dims(config.task, horizon=config.horizon, options=config.task_options)
    n = backbone_num_params(config.backbone, width=config.width, input_dim=obs_dim, output_dim=act_dim,
                            kwargs=config.backbone_kwargs)
    est = size_estimate(config, obs_dim=obs_dim, act_dim=act_dim, num_params=n)
    memory = memory or machine_memory()
    if sum(est.values()) > memory:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in est.items())
        raise ValueError(
            f"MAMLConfig does not fit in memory: meta_batch_size = {config.meta_batch_size}, episodes_per_task = "
            f"{config.episodes_per_task}, inner_steps = {config.inner_steps}, horizon = {horizon_of(config)}, "
            f"width = {config.width} ({config.backbone}, {n:,} parameters), dtype = {config.dtype} need about "
            f"{_gib(sum(est.values()))} ({parts}) but this machine has {_gib(memory)}; allowed: a size whose "
            "estimate fits (smaller meta_batch_size, episodes_per_task, horizon or width)")
    return est


def horizon_of(config) -> int:
    """The episode length: ``horizon``, or the task family's registered horizon when it is None."""
    return int(config.horizon) if config.horizon is not None else tasks.horizon(config.task)


# --- GPUs -------------------------------------------------------------------------------------------------------------
def _cluster_gpus() -> tuple[float | None, str]:
    """GPUs the Learners can get, and where that number comes from (None: not known before joining a cluster)."""
    import ray
    import torch

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0)), "GPUs in the Ray cluster"
    if os.environ.get("RAY_ADDRESS"):
        return None, "the cluster of RAY_ADDRESS (checked once joined)"
    return float(torch.cuda.device_count()), "CUDA devices on this machine (what an embedded Ray sees)"


def check_gpus(config, *, local: bool = True) -> None:
    """GPUs asked for (``num_gpus_per_learner``) must exist: in this process for the local Learner (only checked
    with ``local``: the process that will host it), in the Ray cluster (or on this machine, before an embedded Ray
    starts) for remote Learners."""
    import torch

    per, n = config.num_gpus_per_learner, config.num_learners
    if not per or (n == 0 and not local):
        return
    if n == 0:
        have = torch.cuda.device_count()
        if have == 0:
            fail("num_gpus_per_learner", per, "0 with num_learners = 0 on a machine where torch sees no CUDA device "
                                              "(torch.cuda.device_count() = 0): the local Learner runs in this process")
        return
    have, where = _cluster_gpus()
    if have is not None and per * n > have:
        fail("num_gpus_per_learner", per, f"at most {have:g} / num_learners = {n}: {n} Learner(s) x {per:g} GPUs "
                                          f"need {per * n:g} GPUs; {where}: {have:g}")
