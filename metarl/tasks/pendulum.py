"""PendulumMass: gymnasium's Pendulum-v1 with a task-dependent mass (old RLlib MAML ``PendulumMassEnv``).

mass ~ U(0.5, 2.0) (``mass_range``); dynamics and reward are Pendulum-v1's
(``θ̈ = 3g/(2l) sin θ + 3/(m l²) u``, ``r = -(θ² + 0.1 θ̇² + 0.001 u²)``, the reward of the state before the step);
the mass changes the dynamics, so it changes the return from the second step on. Horizon 200, never terminates.
(Varying the length as well is not implemented.)
"""

from __future__ import annotations

import numpy as np
from gymnasium import utils
from gymnasium.envs.classic_control.pendulum import PendulumEnv, angle_normalize

from metarl.tasks.base import MassTask, MetaEnv, check_range, check_range_pair


class PendulumMassEnv(MetaEnv, PendulumEnv, utils.EzPickle):
    """Swing up a pendulum of unknown mass.

    Args:
        mass_range: support of ``mass ~ U(low, high)``; (0.5, 2.0) as old RLlib MAML.
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
        **kwargs: passed to gymnasium's ``PendulumEnv`` (``render_mode``, ``g``).
    """

    task_class = MassTask

    def __init__(self, *, mass_range: tuple[float, float] = (0.5, 2.0), task_seed: int | None = None, **kwargs):
        self.mass_range = check_range_pair(mass_range, "mass_range", low=1e-6)
        PendulumEnv.__init__(self, **kwargs)
        utils.EzPickle.__init__(self, mass_range=mass_range, task_seed=task_seed, **kwargs)
        self._init_tasks(task_seed)

    def default_task(self) -> MassTask:
        return MassTask(1.0) if self.mass_range[0] <= 1.0 <= self.mass_range[1] else MassTask(self.mass_range[0])

    def _draw_tasks(self, rng, n):
        return [MassTask(m) for m in rng.uniform(*self.mass_range, size=n)]

    def _check_task(self, task):
        low, high = self.mass_range
        check_range(task, "mass", low=low, high=high)

    def _apply_task(self, task):
        self.m = task.mass

    def step(self, u):
        th, thdot = self.state  # Pendulum-v1 pays for the state before the step
        torque = float(np.clip(u, -self.max_torque, self.max_torque)[0])
        observation, reward, terminated, truncated, _ = super().step(u)
        info = {"reward_angle": -angle_normalize(th) ** 2, "reward_velocity": -0.1 * thdot**2,
                "reward_ctrl": -0.001 * torque**2, "task": self._task_array}
        return observation, reward, terminated, truncated, info
