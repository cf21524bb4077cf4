"""Navigation2D: the MAML paper's point robot (Finn et al. 2017; pytorch-maml-rl ``Navigation2DEnv``).

State = position p ∈ R² starting at (0, 0); observation = p (2-d). Action a ∈ R²; the env clips it itself:
``p' = p + clip(a, -0.1, 0.1)``, reward ``r = -‖p' - goal‖₂``, goal ~ U(-0.5, 0.5)². Horizon 100.

The action space is declared unbounded, ``Box(-inf, inf, (2,))``, so that RLlib (``normalize_actions`` /
``clip_actions``) does not rescale or clip policy outputs: the clipping to [-0.1, 0.1]² is part of the task, as in
the original code. (The original authors' example also multiplied the action by 0.1 before clipping; we do not.)
No termination by default; ``terminate_at_goal=True`` ends the episode within ``goal_tolerance`` (0.01) of the
goal, as pytorch-maml-rl does.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces, utils

from metarl.tasks.base import GoalTask, MetaEnv

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_STEP = 0.1


class Navigation2DEnv(MetaEnv, gym.Env, utils.EzPickle):
    """Point robot moving to a goal in [-0.5, 0.5]².

    Args:
        terminate_at_goal: end the episode when ``‖p - goal‖₂ < goal_tolerance`` (pytorch-maml-rl).
        goal_tolerance: 0.01.
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
    """

    metadata = {"render_modes": []}
    task_class = GoalTask

    def __init__(self, *, terminate_at_goal: bool = False, goal_tolerance: float = 0.01,
                 task_seed: int | None = None):
        if not (isinstance(goal_tolerance, (int, float)) and goal_tolerance > 0):
            raise ValueError(f"goal_tolerance must be a number > 0, got {goal_tolerance!r}")
        utils.EzPickle.__init__(self, terminate_at_goal=terminate_at_goal, goal_tolerance=goal_tolerance,
                                task_seed=task_seed)
        self.terminate_at_goal = bool(terminate_at_goal)
        self.goal_tolerance = float(goal_tolerance)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.position = np.zeros(2)  # float64 state; the observation is its float32 copy
        self._init_tasks(task_seed)

    def default_task(self) -> GoalTask:
        return GoalTask((GOAL_HIGH / 2, GOAL_HIGH / 2))

    def _draw_tasks(self, rng, n):
        return [GoalTask(tuple(g)) for g in rng.uniform(GOAL_LOW, GOAL_HIGH, size=(n, 2))]

    def _check_task(self, task):
        if not all(math.isfinite(v) and GOAL_LOW <= v <= GOAL_HIGH for v in task.goal):
            raise ValueError(f"GoalTask.goal = {task.goal!r} is not allowed; allowed range: "
                             f"[{GOAL_LOW}, {GOAL_HIGH}]² for each of x, y")

    def _apply_task(self, task):
        self._goal = np.array(task.goal)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = np.zeros(2)
        return self.position.astype(np.float32), {"task": self._task_array}

    def step(self, action):
        step = np.clip(np.asarray(action, dtype=np.float64), -MAX_STEP, MAX_STEP)
        if step.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {step.shape}")
        self.position = self.position + step
        distance = math.hypot(*(self.position - self._goal))
        terminated = self.terminate_at_goal and distance < self.goal_tolerance
        info = {"reward_goal": -distance, "task": self._task_array}
        return self.position.astype(np.float32), -distance, terminated, False, info
