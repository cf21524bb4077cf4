"""Ant families on gymnasium's Ant-v5 (dt = 0.01 * 5 = 0.05; contact forces ``cfrc_ext`` clipped to [-1, 1]).

Both override ``step`` of ``AntEnv``; terms are computed from the simulator state before/after ``do_simulation``
(torso xy = ``data.qpos[0:2]``, the free joint of the torso: the state after the step, which is also what the
AntGoal observation shows; Ant-v5 reads ``data.body(main_body).xpos``, which MuJoCo last computed one substep before
the end of ``mj_step``: the same displacement shifted by one substep):

- ``AntDirEnv``: ``r = d·v_x - 0.5 Σa² - 5e-4 Σclip(cfrc_ext, -1, 1)² + 1.0·healthy``, ``v = Δxy_torso / dt``;
  terminates as Ant-v5 (torso z outside ``healthy_z_range`` = (0.2, 1.0)). The survive bonus follows Ant-v5's
  ``healthy_reward`` (paid while healthy, i.e. on every step but a terminating one; ProMP also paid it on that last
  step). Lineage: ProMP (H=100, default), VariBAD (H=200 via ``max_episode_steps=200``). Option
  ``direction_2d=True``: the task is an ``AngleTask`` θ ~ U(0, 2π) and the forward term is ``⟨(cos θ, sin θ), v⟩``
  (learn2learn AntDirection samples a normalised Gaussian 2-vector: the same distribution). Observation: Ant-v5's
  105-d (qpos without x, y; qvel; clipped cfrc_ext of bodies 1..).
- ``AntGoalEnv``: ``r = -‖xy_torso - goal‖₁ - 0.1 Σa² - 5e-4 Σclip(cfrc_ext, -1, 1)²``, no survive bonus, never
  terminates; goal = r(cos a, sin a), a ~ U(0, 2π), r = 3·sqrt(U(0, 1)) (uniform on the disk of radius 3).
  The observation includes x, y (107-d, ``exclude_current_positions_from_observation=False``) as in the
  ProMP / PEARL / VariBAD lineage (old RLlib MAML too); H=200.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from metarl.tasks.base import AngleTask, DirectionTask, GoalTask, MetaEnv, check_choice, check_range

GOAL_RADIUS = 3.0


class _AntTaskEnv(MetaEnv, AntEnv):
    """Shared step; the family supplies ``_task_reward(xy_before, xy_after) -> (key, value)``."""

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)  # costs in float64 (data.ctrl is float64 too)
        xy_before = self.data.qpos[0:2].copy()
        self.do_simulation(action, self.frame_skip)
        xy_after = self.data.qpos[0:2].copy()
        key, task_reward = self._task_reward(xy_before, xy_after)
        healthy = self.healthy_reward  # Ant-v5: healthy_reward * is_healthy (0 for AntGoal)
        ctrl_cost = self.control_cost(action)
        contact_cost = self.contact_cost
        reward = task_reward + healthy - ctrl_cost - contact_cost
        terminated = self._terminate_when_unhealthy and not self.is_healthy
        info = {"x_position": xy_after[0], "y_position": xy_after[1], key: task_reward, "reward_ctrl": -ctrl_cost,
                "reward_contact": -contact_cost, "reward_survive": healthy, "task": self._task_array}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, False, info

    def _task_reward(self, xy_before: np.ndarray, xy_after: np.ndarray) -> tuple[str, float]:
        raise NotImplementedError


class AntDirEnv(_AntTaskEnv):
    """Run forward/backward along x (``DirectionTask``), or along an angle with ``direction_2d=True``.

    Args:
        direction_2d: task = ``AngleTask`` θ ~ U(0, 2π), forward term ``cos θ v_x + sin θ v_y`` (learn2learn).
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
        **kwargs: passed to gymnasium's ``AntEnv`` (its defaults are the protocol: ctrl 0.5, contact 5e-4,
            healthy_reward 1.0, healthy_z_range (0.2, 1.0), terminate_when_unhealthy True).
    """

    def __init__(self, *, direction_2d: bool = False, task_seed: int | None = None, **kwargs):
        if not isinstance(direction_2d, bool):
            raise ValueError(f"direction_2d must be a bool, got {direction_2d!r}")
        self.direction_2d = direction_2d
        self.task_class = AngleTask if direction_2d else DirectionTask
        self.two_tasks = not direction_2d
        AntEnv.__init__(self, **kwargs)
        utils.EzPickle.__init__(self, direction_2d=direction_2d, task_seed=task_seed, **kwargs)
        self._init_tasks(task_seed)

    def default_task(self):
        return AngleTask(0.0) if self.direction_2d else DirectionTask(1.0)

    def _draw_tasks(self, rng, n):
        if self.direction_2d:
            return [AngleTask(a) for a in rng.uniform(0.0, 2 * math.pi, size=n)]
        return [DirectionTask(d) for d in rng.choice((-1.0, 1.0), size=n)]

    def _check_task(self, task):
        if self.direction_2d:
            check_range(task, "angle", low=0.0, high=2 * math.pi)
        else:
            check_choice(task, "direction", (-1.0, 1.0))

    def _apply_task(self, task):
        if self.direction_2d:
            self._unit = (math.cos(task.angle), math.sin(task.angle))
        else:
            self._unit = (task.direction, 0.0)

    def _task_reward(self, xy_before, xy_after):
        vx, vy = (xy_after - xy_before) / self.dt
        return "reward_forward", self._unit[0] * vx + self._unit[1] * vy


class AntGoalEnv(_AntTaskEnv):
    """Reach a goal in the disk of radius 3: ``r = -‖xy - goal‖₁ - 0.1 Σa² - 5e-4 contact``; observes x, y.

    Args:
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
        ctrl_cost_weight: 0.1 (ProMP / old RLlib MAML).
        **kwargs: passed to gymnasium's ``AntEnv``.
    """

    task_class = GoalTask

    def __init__(self, *, task_seed: int | None = None, ctrl_cost_weight: float = 0.1, healthy_reward: float = 0.0,
                 terminate_when_unhealthy: bool = False, exclude_current_positions_from_observation: bool = False,
                 **kwargs):
        options = dict(ctrl_cost_weight=ctrl_cost_weight, healthy_reward=healthy_reward,
                       terminate_when_unhealthy=terminate_when_unhealthy,
                       exclude_current_positions_from_observation=exclude_current_positions_from_observation, **kwargs)
        AntEnv.__init__(self, **options)
        utils.EzPickle.__init__(self, task_seed=task_seed, **options)
        self._init_tasks(task_seed)

    def default_task(self) -> GoalTask:
        return GoalTask((GOAL_RADIUS / 2, 0.0))

    def _draw_tasks(self, rng, n):
        angle = rng.uniform(0.0, 2 * math.pi, size=n)
        radius = GOAL_RADIUS * np.sqrt(rng.uniform(0.0, 1.0, size=n))  # uniform over the disk's area
        return [GoalTask((r * math.cos(a), r * math.sin(a))) for r, a in zip(radius, angle)]

    def _check_task(self, task):
        x, y = task.goal
        if not (math.isfinite(x) and math.isfinite(y) and math.hypot(x, y) <= GOAL_RADIUS):
            raise ValueError(f"GoalTask.goal = {task.goal!r} is not allowed; allowed: finite (x, y) with "
                             f"‖goal‖₂ <= {GOAL_RADIUS}")

    def _apply_task(self, task):
        self._goal = np.array(task.goal)

    def _task_reward(self, xy_before, xy_after):
        return "reward_goal", -float(np.abs(xy_after - self._goal).sum())
