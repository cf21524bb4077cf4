"""HalfCheetah families on gymnasium's HalfCheetah-v5 (dt = 0.01 * 5 = 0.05, 17-d observation without x).

Both override ``step`` of ``HalfCheetahEnv``; the reward is computed from the simulator state before and after
``do_simulation``:  ``v_x = (x_torso' - x_torso) / dt`` and ``ctrl = 0.05 * Σ a²``.

- ``HalfCheetahVelEnv``: ``r = -|v_x - v*| - 0.05 Σa²``, ``v* ~ U(velocity_range)``. Lineage: MAML paper (Finn et al.
  2017), garage, pytorch-maml-rl use U(0, 2) and H=200 (our defaults); ProMP, PEARL and VariBAD use U(0, 3)
  (``velocity_range=(0.0, 3.0)``); H=100 via ``max_episode_steps=100``.
- ``HalfCheetahDirEnv``: ``r = d·v_x - 0.05 Σa²``, ``d ∈ {-1, +1}``. Lineage: ProMP, old RLlib MAML, learn2learn,
  garage with H=100 (default); the MAML paper and PEARL use H=200 (``max_episode_steps=200``). Train = test = the
  two tasks, as in the literature.
Neither terminates (the episode ends at the TimeLimit).
"""

from __future__ import annotations

import logging

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from metarl.tasks.base import (
    DirectionTask,
    MetaEnv,
    VelocityTask,
    check_choice,
    check_range,
    check_range_pair,
)

CTRL_COST_WEIGHT = 0.05
logger = logging.getLogger(__name__)


class _CheetahTaskEnv(MetaEnv, HalfCheetahEnv):
    """Shared step: the task only changes the forward term ``_forward_reward(v_x)``."""

    def _initialize_simulation(self):
        """gymnasium's, with MuJoCo's warnings sent to logging: MuJoCo 4.0 warns that half_cheetah.xml's
        ``settotalmass`` is deprecated, and would print it and append it to ./MUJOCO_LOG.TXT in every worker."""
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(lambda message: logger.debug("mujoco: %s", message))
        try:
            return super()._initialize_simulation()
        finally:
            mujoco.set_mju_user_warning(previous)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)  # costs in float64 (data.ctrl is float64 too)
        x_before = self.data.qpos[0]  # rootx slide joint == torso x
        self.do_simulation(action, self.frame_skip)
        x_after = self.data.qpos[0]
        x_velocity = (x_after - x_before) / self.dt
        forward = self._forward_reward(x_velocity)
        ctrl_cost = self._ctrl_cost_weight * float(np.sum(np.square(action)))
        info = {"x_position": x_after, "x_velocity": x_velocity, "reward_forward": forward,
                "reward_ctrl": -ctrl_cost, "task": self._task_array}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), forward - ctrl_cost, False, False, info

    def _forward_reward(self, x_velocity: float) -> float:
        raise NotImplementedError


class HalfCheetahVelEnv(_CheetahTaskEnv):
    """Run at a target velocity v*: ``r = -|v_x - v*| - 0.05 Σa²``.

    Args:
        velocity_range: support of ``v* ~ U(low, high)``; (0, 2) MAML paper, (0, 3) ProMP/PEARL/VariBAD.
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
        ctrl_cost_weight: 0.05 as in all the lineages above.
        **kwargs: passed to gymnasium's ``HalfCheetahEnv`` (e.g. ``reset_noise_scale``, ``render_mode``).
    """

    task_class = VelocityTask

    def __init__(self, *, velocity_range: tuple[float, float] = (0.0, 2.0), task_seed: int | None = None,
                 ctrl_cost_weight: float = CTRL_COST_WEIGHT, **kwargs):
        self.velocity_range = check_range_pair(velocity_range, "velocity_range", low=0.0)
        HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, velocity_range=velocity_range, task_seed=task_seed,
                                ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._init_tasks(task_seed)

    def default_task(self) -> VelocityTask:
        return VelocityTask(0.5 * (self.velocity_range[0] + self.velocity_range[1]))

    def _draw_tasks(self, rng, n):
        return [VelocityTask(v) for v in rng.uniform(*self.velocity_range, size=n)]

    def _check_task(self, task):
        low, high = self.velocity_range
        check_range(task, "velocity", low=low, high=high)

    def _apply_task(self, task):
        self._goal_velocity = task.velocity

    def _forward_reward(self, x_velocity):
        return -abs(x_velocity - self._goal_velocity)


class HalfCheetahDirEnv(_CheetahTaskEnv):
    """Run forward (d=+1) or backward (d=-1): ``r = d·v_x - 0.05 Σa²``. Train tasks: d uniform on {-1, +1};
    test tasks: +1, -1, +1, ... (train = test = the two tasks, as in the literature).

    Args:
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
        ctrl_cost_weight: 0.05.
        **kwargs: passed to gymnasium's ``HalfCheetahEnv``.
    """

    task_class = DirectionTask
    two_tasks = True

    def __init__(self, *, task_seed: int | None = None, ctrl_cost_weight: float = CTRL_COST_WEIGHT, **kwargs):
        HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, task_seed=task_seed, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._init_tasks(task_seed)

    def default_task(self) -> DirectionTask:
        return DirectionTask(1.0)

    def _draw_tasks(self, rng, n):
        return [DirectionTask(d) for d in rng.choice((-1.0, 1.0), size=n)]

    def _check_task(self, task):
        check_choice(task, "direction", (-1.0, 1.0))

    def _apply_task(self, task):
        self._direction = task.direction

    def _forward_reward(self, x_velocity):
        return self._direction * x_velocity
