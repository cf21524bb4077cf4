"""Bandit: the cheapest memory oracle. A task is the paying arm of ``num_arms`` (default 2).

Observation: a constant ``[1.0]`` (it carries nothing about the task); action: ``Discrete(num_arms)``, one pull per
step; reward 1.0 for the paying arm, else 0.0. The env never terminates; its registered horizon is 1, so one
episode is one pull. Nothing in an episode tells the policy which arm pays before it pulls, so only memory across
episodes (trial memory, RL²) or a gradient step on earlier episodes can beat chance (1 / ``num_arms``).

Tasks come from a finite set (``all_tasks()``): training tasks are uniform draws of an arm; the held-out set
cycles through every arm (0, 1, ..., num_arms - 1, 0, ...), so train and test share tasks by design.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces, utils

from metarl.tasks.base import ArmTask, MetaEnv

MAX_ARMS = 1000


class BanditEnv(MetaEnv, gym.Env, utils.EzPickle):
    """A deterministic ``num_arms``-armed bandit: arm ``task.arm`` pays 1, the others 0.

    Args:
        num_arms: number of arms, 2..1000.
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
    """

    metadata = {"render_modes": []}
    task_class = ArmTask

    def __init__(self, *, num_arms: int = 2, task_seed: int | None = None):
        if isinstance(num_arms, bool) or not isinstance(num_arms, (int, np.integer)) or not 2 <= num_arms <= MAX_ARMS:
            raise ValueError(f"num_arms = {num_arms!r} is not allowed; allowed: an integer in 2..{MAX_ARMS}")
        utils.EzPickle.__init__(self, num_arms=num_arms, task_seed=task_seed)
        self.num_arms = int(num_arms)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.num_arms)
        self._obs = np.ones(1, np.float32)
        self._init_tasks(task_seed)

    def all_tasks(self) -> list[ArmTask]:
        return [ArmTask(float(arm)) for arm in range(self.num_arms)]

    def test_tasks(self, n: int = 40, seed: int = 1) -> list[ArmTask]:
        """``n`` tasks cycling through every arm: 0, 1, ..., num_arms - 1, 0, ... (``seed`` unused)."""
        super().test_tasks(n, seed)  # validates n
        return [ArmTask(float(i % self.num_arms)) for i in range(n)]

    def default_task(self) -> ArmTask:
        return ArmTask(0.0)

    def _draw_tasks(self, rng, n):
        return [ArmTask(float(arm)) for arm in rng.integers(self.num_arms, size=n)]

    def _check_task(self, task):
        if task.arm not in range(self.num_arms):
            raise ValueError(f"ArmTask.arm = {task.arm!r} is not allowed; allowed values: the integers "
                             f"0..{self.num_arms - 1} (num_arms = {self.num_arms})")

    def _apply_task(self, task):
        self._arm = int(task.arm)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self._obs.copy(), {"task": self._task_array}

    def step(self, action):
        if not self.action_space.contains(int(np.asarray(action))):
            raise ValueError(f"action = {action!r} is not an arm of Discrete({self.num_arms})")
        reward = 1.0 if int(np.asarray(action)) == self._arm else 0.0
        return self._obs.copy(), reward, False, False, {"task": self._task_array}
