"""Meta-RL task distributions as gymnasium envs (protocol: docs/tasks.md).

Importing this package registers the gymnasium ids below (its one import-time side effect), so that
``gymnasium.make("metarl.tasks:metarl/HalfCheetahVel-v0")`` works in any process, including Ray workers that never
imported metarl: gymnasium imports the module before the lookup. Entry points are strings, so importing this
package loads neither MuJoCo nor Ray.

==================  ==========================  =======  =============================================
CLI name            gymnasium id                horizon  family (``env.unwrapped``)
==================  ==========================  =======  =============================================
halfcheetah-vel     metarl/HalfCheetahVel-v0    200      ``halfcheetah.HalfCheetahVelEnv``
halfcheetah-dir     metarl/HalfCheetahDir-v0    100      ``halfcheetah.HalfCheetahDirEnv``
ant-dir             metarl/AntDir-v0            100      ``ant.AntDirEnv``
ant-goal            metarl/AntGoal-v0           200      ``ant.AntGoalEnv``
humanoid-dir        metarl/HumanoidDir-v0       200      ``humanoid.HumanoidDirEnv``
navigation-2d       metarl/Navigation2D-v0      100      ``navigation.Navigation2DEnv``
pendulum-mass       metarl/PendulumMass-v0      200      ``pendulum.PendulumMassEnv``
metaworld-ml1-reach metarl/MetaWorldML1Reach-v0 500      ``metaworld.MetaWorldML1Env`` (reach-v3)
metaworld-ml1-push  metarl/MetaWorldML1Push-v0  500      ``metaworld.MetaWorldML1Env`` (push-v3)
metaworld-ml1-pick-place  metarl/MetaWorldML1PickPlace-v0  500  ``metaworld.MetaWorldML1Env`` (pick-place-v3)
metaworld-ml10      metarl/MetaWorldML10-v0     500      ``metaworld.MetaWorldML10Env``
bandit              metarl/Bandit-v0            1        ``bandit.BanditEnv`` (memory oracle)
==================  ==========================  =======  =============================================

Meta-World families allow horizons up to 500 (``MAX_HORIZON``; ``make`` rejects more, see ``check_horizon``).

Usage::

    env = metarl.tasks.make("halfcheetah-vel", velocity_range=(0.0, 3.0), horizon=100)
    tasks = env.unwrapped.sample_tasks(20, seed=0)
    env.unwrapped.task = tasks[0]
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium

from metarl.tasks.base import AngleTask, ArmTask, DirectionTask, GoalTask, MassTask, MetaEnv, Task, VelocityTask

#: CLI name -> (gymnasium id, entry point, default horizon = max_episode_steps)
FAMILIES: dict[str, tuple[str, str, int]] = {
    "halfcheetah-vel": ("metarl/HalfCheetahVel-v0", "metarl.tasks.halfcheetah:HalfCheetahVelEnv", 200),
    "halfcheetah-dir": ("metarl/HalfCheetahDir-v0", "metarl.tasks.halfcheetah:HalfCheetahDirEnv", 100),
    "ant-dir": ("metarl/AntDir-v0", "metarl.tasks.ant:AntDirEnv", 100),
    "ant-goal": ("metarl/AntGoal-v0", "metarl.tasks.ant:AntGoalEnv", 200),
    "humanoid-dir": ("metarl/HumanoidDir-v0", "metarl.tasks.humanoid:HumanoidDirEnv", 200),
    "navigation-2d": ("metarl/Navigation2D-v0", "metarl.tasks.navigation:Navigation2DEnv", 100),
    "pendulum-mass": ("metarl/PendulumMass-v0", "metarl.tasks.pendulum:PendulumMassEnv", 200),
    "metaworld-ml1-reach": ("metarl/MetaWorldML1Reach-v0", "metarl.tasks.metaworld:MetaWorldML1Env", 500),
    "metaworld-ml1-push": ("metarl/MetaWorldML1Push-v0", "metarl.tasks.metaworld:MetaWorldML1Env", 500),
    "metaworld-ml1-pick-place": ("metarl/MetaWorldML1PickPlace-v0", "metarl.tasks.metaworld:MetaWorldML1Env", 500),
    "metaworld-ml10": ("metarl/MetaWorldML10-v0", "metarl.tasks.metaworld:MetaWorldML10Env", 500),
    "bandit": ("metarl/Bandit-v0", "metarl.tasks.bandit:BanditEnv", 1),
}
#: the MuJoCo locomotion families (``metarl train --preset auto`` gives them the ``mujoco`` preset)
LOCOMOTION = ("halfcheetah-vel", "halfcheetah-dir", "ant-dir", "ant-goal", "humanoid-dir")
#: registration kwargs of families that share a class, and the longest horizon a family allows
_KWARGS = {"metaworld-ml1-reach": {"env_name": "reach-v3"}, "metaworld-ml1-push": {"env_name": "push-v3"},
           "metaworld-ml1-pick-place": {"env_name": "pick-place-v3"}}
MAX_HORIZON = {name: 500 for name in FAMILIES if name.startswith("metaworld-")}
_BY_ID = {gym_id: name for name, (gym_id, _, _) in FAMILIES.items()}

_LAZY = {  # classes whose modules import MuJoCo: loaded on first attribute access (PEP 562)
    "HalfCheetahVelEnv": "metarl.tasks.halfcheetah", "HalfCheetahDirEnv": "metarl.tasks.halfcheetah",
    "AntDirEnv": "metarl.tasks.ant", "AntGoalEnv": "metarl.tasks.ant", "HumanoidDirEnv": "metarl.tasks.humanoid",
    "Navigation2DEnv": "metarl.tasks.navigation", "PendulumMassEnv": "metarl.tasks.pendulum",
    "check_task_distribution": "metarl.tasks.check",
    "MetaWorldML1Env": "metarl.tasks.metaworld", "MetaWorldML10Env": "metarl.tasks.metaworld",
    "MetaWorldTask": "metarl.tasks.metaworld",
    "BanditEnv": "metarl.tasks.bandit",
}

__all__ = ["FAMILIES", "MAX_HORIZON", "AngleTask", "ArmTask", "DirectionTask", "GoalTask", "MassTask", "MetaEnv", "Task", "VelocityTask",
           "check_horizon", "env_id", "horizon", "make", "names", *_LAZY]


def names() -> list[str]:
    """The CLI names of all families."""
    return list(FAMILIES)


def _name(name_or_id: str) -> str:
    if name_or_id in FAMILIES:
        return name_or_id
    bare = name_or_id.split(":", 1)[1] if name_or_id.startswith("metarl.tasks:") else name_or_id
    if bare in _BY_ID:
        return _BY_ID[bare]
    raise ValueError(f"unknown task family {name_or_id!r}; known names: {', '.join(FAMILIES)} "
                     f"(or their gymnasium ids: {', '.join(_BY_ID)})")


def env_id(name: str) -> str:
    """Gymnasium id of a CLI name (a known id is returned as is); unknown -> ValueError listing the names."""
    return FAMILIES[_name(name)][0]


def horizon(name_or_id: str) -> int:
    """The default horizon (registered ``max_episode_steps``) of a family."""
    return FAMILIES[_name(name_or_id)][2]


def check_horizon(name_or_id: str, horizon: int | None) -> None:
    """Raise ValueError if ``horizon`` exceeds the family's longest allowed episode (Meta-World: 500)."""
    limit = MAX_HORIZON.get(_name(name_or_id))
    if limit is not None and isinstance(horizon, int) and horizon > limit:
        raise ValueError(f"horizon (max_episode_steps) = {horizon} is not allowed for {_name(name_or_id)}: Meta-World "
                         f"envs raise when stepped past max_path_length = {limit}; allowed: 1..{limit}")


def make(name: str, *, horizon: int | None = None, **options: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id(name), **options)`` with the TimeLimit set to ``horizon`` (default: the protocol's).

    ``options`` are the family's constructor kwargs (e.g. ``velocity_range``, ``direction_2d``, ``velocity_dt``,
    ``task_seed``) or gymnasium.make's (``max_episode_steps``, ``render_mode``).
    """
    gym_id = env_id(name)
    if horizon is not None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        options["max_episode_steps"] = horizon
    check_horizon(name, options.get("max_episode_steps"))
    return gymnasium.make(gym_id, **options)


def _register() -> None:
    for name, (gym_id, entry_point, steps) in FAMILIES.items():
        if gym_id not in gymnasium.registry:
            gymnasium.register(id=gym_id, entry_point=entry_point, max_episode_steps=steps,
                               kwargs=dict(_KWARGS.get(name, {})))


_register()


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metarl.tasks' has no attribute {name!r}")
