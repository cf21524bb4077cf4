"""MAMLConfig: the numbers of MAML (an RLlib ``AlgorithmConfig`` with a ``.meta(...)`` builder) and their validation.

``MAML`` (the loop) lives in ``rllib_ext.algorithm``; ``MAMLConfig().build_algo()`` builds it.
"""

from __future__ import annotations

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from metarl import models, tasks
from rllib_ext.learner import MAMLLearner
from rllib_ext.module import MetaRLModule
from rllib_ext.runner import MAMLEnvRunner


def gym_env_id(task: str) -> str:
    """The gymnasium id in its ``module:id`` form, so that Ray workers that never imported metarl.tasks find it."""
    return f"metarl.tasks:{tasks.env_id(task)}"

#: the fields `.meta()` sets, with their defaults (old RLlib MAML / ProMP defaults)
META_DEFAULTS = dict(
    task="navigation-2d",  # CLI task name (metarl.tasks.names())
    task_options={},  # kwargs for the task env, e.g. {"max_episode_steps": 100}; they become env_config
    backbone="gru",  # metarl.models name; a top-level field so Tune can grid-search it
    width=64,  # backbone width
    backbone_kwargs={},
    init_log_std=0.0,
    inner_lr=0.1,  # α of the inner VPG step
    inner_steps=1,  # K inner steps (0 = the non-meta multi-task baseline)
    meta_batch_size=20,  # tasks per meta-iteration
    episodes_per_task=20,  # episodes per task per inner step (a multiple of num_envs_per_env_runner)
    first_order=False,  # drop the second-order term of the meta-gradient
    outer_steps=5,  # Adam steps on the clipped surrogate per meta-iteration
    clip_param=0.3,  # ProMP surrogate clip ε
    normalize_advantages=True,
    max_seq_len=None,  # BPTT length; None = the task's horizon (must be >= horizon)
    dtype="float32",  # "float64" for exact-gradient checks
    task_seed=None,  # seed of the task sampler; None = config.seed
    max_task_retries=3,  # re-run a dead runner's tasks on healthy runners this many times, then fail
)


class MAMLConfig(AlgorithmConfig):
    """Config for :class:`MAML`. Example::

        config = (MAMLConfig()
                  .meta(task="halfcheetah-dir", backbone="gru", inner_lr=0.1, meta_batch_size=20)
                  .env_runners(num_env_runners=2, num_envs_per_env_runner=10))
        algo = config.build_algo()
    """

    def __init__(self, algo_class=None):
        if algo_class is None:
            from rllib_ext.algorithm import MAML  # the Algorithm imports this module

            algo_class = MAML
        super().__init__(algo_class=algo_class)
        for k, v in META_DEFAULTS.items():
            setattr(self, k, v.copy() if isinstance(v, dict) else v)
        self.lr = 1e-3  # outer Adam lr
        self.grad_clip = 1.0  # outer gradient-norm clip
        self.gamma = 0.99
        self.env_runner_cls = MAMLEnvRunner
        self.num_env_runners = 0
        self.num_envs_per_env_runner = 10
        self.restart_failed_env_runners = True
        self.env = gym_env_id(self.task)

    def meta(self, **kwargs) -> MAMLConfig:
        """Set MAML fields (see ``META_DEFAULTS`` for names, defaults and meaning)."""
        for k, v in kwargs.items():
            if k not in META_DEFAULTS:
                raise ValueError(f"MAMLConfig.meta(): unknown field {k!r}; known fields: {sorted(META_DEFAULTS)}")
            if v is not NotProvided:
                setattr(self, k, v)
        if "task" in kwargs and kwargs["task"] in tasks.names():
            self.env = gym_env_id(self.task)
        self.env_config = dict(self.task_options)
        return self

    @property
    def horizon(self) -> int:
        return int(self.task_options.get("max_episode_steps") or tasks.horizon(self.task))

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(
            module_class=MetaRLModule,
            model_config={
                "backbone": self.backbone,
                "width": self.width,
                "backbone_kwargs": dict(self.backbone_kwargs),
                "init_log_std": self.init_log_std,
                "max_seq_len": self.max_seq_len or self.horizon,
                "dtype": self.dtype,
            },
        )

    def get_default_learner_class(self):
        return MAMLLearner

    def validate_meta(self) -> None:
        """Errors name the field, the value and what is allowed; raised before any actor starts."""

        def bad(field, allowed):
            raise ValueError(f"MAMLConfig.{field} = {getattr(self, field)!r} is invalid: {allowed}")

        if self.task not in tasks.names():
            bad("task", f"must be one of {tasks.names()}")
        if self.backbone not in models.available():
            bad("backbone", f"must be one of {models.available()}")
        for f in ("inner_lr", "lr"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                bad(f, "must be a finite number > 0")
        for f, lo in (("inner_steps", 0), ("meta_batch_size", 1), ("episodes_per_task", 1), ("outer_steps", 1)):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                bad(f, f"must be an integer >= {lo}")
        if not (isinstance(self.width, int) and self.width > 0):
            bad("width", "must be a positive integer")
        if not 0 < self.clip_param < 1:
            bad("clip_param", "must be in (0, 1)")
        if not 0 < self.gamma <= 1:
            bad("gamma", "must be in (0, 1]")
        if self.dtype not in ("float32", "float64"):
            bad("dtype", "must be 'float32' or 'float64'")
        if self.episodes_per_task % self.num_envs_per_env_runner:
            raise ValueError(
                f"MAMLConfig.episodes_per_task = {self.episodes_per_task} must be a multiple of "
                f"num_envs_per_env_runner = {self.num_envs_per_env_runner} (each sub-env runs the same number of "
                "whole episodes of the runner's task)"
            )
        n_learners = max(self.num_learners, 1)
        if self.meta_batch_size % n_learners:
            raise ValueError(
                f"MAMLConfig.meta_batch_size = {self.meta_batch_size} must be divisible by num_learners = "
                f"{self.num_learners} (the Learners shard the meta-batch by task)"
            )
        if self.max_seq_len is not None and self.max_seq_len < self.horizon:
            raise ValueError(
                f"MAMLConfig.max_seq_len = {self.max_seq_len} is below the horizon {self.horizon} of task "
                f"{self.task!r}: MAML backpropagates through whole episodes (max_seq_len >= horizon)"
            )

    def validate(self) -> None:
        self.validate_meta()
        self.env = gym_env_id(self.task)
        self.env_config = dict(self.task_options)
        super().validate()


