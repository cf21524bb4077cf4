"""MAMLConfig: the numbers of MAML (an RLlib ``AlgorithmConfig`` with a ``.meta(...)`` builder) and their validation.

``MAML`` (the loop) lives in ``rllib_ext.algorithm``; ``MAMLConfig().build_algo()`` builds it.
"""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from metarl import tasks
from rllib_ext import fields
from rllib_ext.learner import MAMLLearner
from rllib_ext.module import MetaRLModule
from rllib_ext.runner import MAMLEnvRunner


def gym_env_id(task: str) -> str:
    """The gymnasium id in its ``module:id`` form, so that Ray workers that never imported metarl.tasks find it."""
    return f"metarl.tasks:{tasks.env_id(task)}"

#: the fields ``.meta()`` sets, with their defaults (from the table ``rllib_ext.fields.FIELDS``)
META_DEFAULTS = fields.defaults("meta")


def _from_legacy(state: dict) -> dict:
    """A config saved before ``horizon`` was a field kept the episode length in ``task_options``."""
    options = state.get("task_options")
    if "horizon" not in state and isinstance(options, dict) and "max_episode_steps" in options:
        options = dict(options)
        state = {**state, "horizon": options.pop("max_episode_steps"), "task_options": options}
    return state


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
        for k, v in fields.defaults().items():  # the MAML fields and the outer-loop fields RLlib also has
            setattr(self, k, v)
        self.env_runner_cls = MAMLEnvRunner
        self.restart_failed_env_runners = True
        self.env = gym_env_id(self.task)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(_from_legacy(state))

    def update_from_dict(self, config_dict: dict) -> MAMLConfig:
        return super().update_from_dict(_from_legacy(dict(config_dict)))

    def meta(self, **kwargs) -> MAMLConfig:
        for k, v in kwargs.items():
            if k not in META_DEFAULTS:
                raise ValueError(f"MAMLConfig.meta(): unknown field {k!r}; known fields: {sorted(META_DEFAULTS)}")
            if v is not NotProvided:
                setattr(self, k, v)
        if "task" in kwargs and kwargs["task"] in tasks.names():
            self.env = gym_env_id(self.task)
        self.env_config = self.env_options()
        return self

    meta.__doc__ = fields.meta_doc()

    @property
    def max_episode_steps(self) -> int:
        """The episode length: ``horizon``, or the task family's registered horizon when ``horizon`` is None."""
        return fields.horizon_of(self)

    def env_options(self) -> dict:
        """The kwargs every env is made with (RLlib's ``env_config``): ``task_options`` and the horizon."""
        options = dict(self.task_options) if isinstance(self.task_options, dict) else {}
        if self.horizon is not None:
            options["max_episode_steps"] = self.horizon
        return options

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(
            module_class=MetaRLModule,
            model_config={
                "backbone": self.backbone,
                "width": self.width,
                "backbone_kwargs": dict(self.backbone_kwargs),
                "init_log_std": self.init_log_std,
                "max_seq_len": self.max_seq_len or self.max_episode_steps,
                "dtype": self.dtype,
                "trial_inputs": self.uses_trial_inputs,
            },
        )

    @property
    def uses_trial_inputs(self) -> bool:
        """``trial_inputs`` resolved: on with ``memory="trial"`` unless set."""
        return self.memory == "trial" if self.trial_inputs is None else bool(self.trial_inputs)

    @property
    def uses_trial_returns(self) -> bool:
        """``trial_returns`` resolved: on with ``memory="trial"`` unless set."""
        return self.memory == "trial" if self.trial_returns is None else bool(self.trial_returns)

    def get_default_learner_class(self):
        return MAMLLearner

    def validate_meta(self, *, local_learner_here: bool = True) -> None:
        """Every field by the table (type, range, choices), then the fields together, the task options and backbone
        kwargs by their signatures, the size estimate and the GPUs. Errors name the field, the value and what is
        allowed; raised before RLlib sees the config and before any actor starts.

        ``local_learner_here``: this process will host the local Learner (``metarl train``'s driver, ``MAML.setup``),
        so its GPUs must be visible here. RLlib's ``validate()`` also runs where they need not be (Tune computes a
        trial's resource request in the sweep driver, e.g. on a CPU-only head): there only remote Learners'
        GPUs are checked, and ``MAML.setup`` checks the local one inside the trial."""
        fields.check_fields(self)
        fields.check_task_options(self.task, self.task_options)
        fields.check_backbone_kwargs(self.backbone, self.backbone_kwargs)
        if self.episodes_per_task % self.num_envs_per_env_runner:
            raise ValueError(
                f"MAMLConfig.episodes_per_task = {self.episodes_per_task} must be a multiple of "
                f"num_envs_per_env_runner = {self.num_envs_per_env_runner} (each sub-env runs the same number of "
                "whole episodes of the runner's task)"
            )
        if self.eval_episodes is not None and self.eval_episodes % self.num_envs_per_env_runner:
            raise ValueError(
                f"MAMLConfig.eval_episodes = {self.eval_episodes} (flag --eval-episodes) must be a multiple of "
                f"num_envs_per_env_runner = {self.num_envs_per_env_runner} (or None: episodes_per_task)"
            )
        if self.first_order and self.first_order_until is not None:
            raise ValueError(f"MAMLConfig.first_order_until = {self.first_order_until} (flag --first-order-until) "
                             "switches from first to second order, but first_order = True keeps first order "
                             "throughout: give one of them (first_order=False with first_order_until)")
        if self.memory == "trial" and (self.outer_kl_coeff or self.outer_target_kl is not None):
            raise ValueError(f"MAMLConfig.outer_kl_coeff = {self.outer_kl_coeff}, outer_target_kl = "
                             f"{self.outer_target_kl} need memory='episode' (got memory='trial'); allowed with trial "
                             "memory: outer_kl_coeff = 0 and outer_target_kl = None")
        for name in ("trial_inputs", "trial_returns"):
            if getattr(self, name) and self.memory != "trial":
                raise ValueError(f"MAMLConfig.{name} = True needs memory='trial' (got memory={self.memory!r}); "
                                 f"allowed with memory='episode': False or None")
        n_learners = max(self.num_learners, 1)
        if self.meta_batch_size % n_learners:
            raise ValueError(
                f"MAMLConfig.meta_batch_size = {self.meta_batch_size} must be divisible by num_learners = "
                f"{self.num_learners} (the Learners shard the meta-batch by task)"
            )
        if self.max_seq_len is not None and self.max_seq_len < self.max_episode_steps:
            raise ValueError(
                f"MAMLConfig.max_seq_len = {self.max_seq_len} is below the horizon {self.max_episode_steps} of task "
                f"{self.task!r}: allowed: an integer >= {self.max_episode_steps}, or None (the horizon); MAML "
                "backpropagates through whole episodes"
            )
        fields.check_size(self)
        fields.check_gpus(self, local=local_learner_here)

    def validate(self) -> None:
        self.validate_meta(local_learner_here=False)
        self.env = gym_env_id(self.task)
        self.env_config = self.env_options()
        super().validate()
