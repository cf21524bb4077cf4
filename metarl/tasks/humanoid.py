"""HumanoidDir on gymnasium's Humanoid-v5 (timestep 0.003, frame_skip 5, dt = 0.015; 348-d observation).

``r = 0.25·⟨(cos θ, sin θ), Δ(mass-centre xy) / Δt⟩ - 0.1 Σa² - min(5e-7 Σcfrc_ext², 10) + 5.0·healthy``,
θ ~ U(0, 2π); terminates as Humanoid-v5 (torso z outside (1, 2)). Lineage: PEARL / VariBAD ``HumanoidDirEnv``
(weight 0.25, same ctrl/contact/survive terms). ``Δt``:

- ``velocity_dt="env"`` (default): gymnasium's ``dt`` = 0.015, the physical velocity of the mass centre;
- ``velocity_dt="model"``: the model timestep 0.003 (PEARL / VariBAD, inherited from old gym's
  ``model.opt.timestep``): the direction term is 5x larger. Say which one produced each number.

The mass centre is Humanoid-v5's: ``Σ m_b xipos_b / Σ m_b`` over bodies, with ``xipos`` as MuJoCo last computed it
inside ``mj_step`` (one substep before its end; PEARL/VariBAD's mujoco-py code read it the same way).
The survive bonus follows Humanoid-v5's ``healthy_reward`` (paid while healthy, so not on a terminating step).
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv

from metarl.tasks.base import AngleTask, MetaEnv, check_range

VELOCITY_DT = ("env", "model")


class HumanoidDirEnv(MetaEnv, HumanoidEnv):
    """Walk in direction θ.

    Args:
        velocity_dt: "env" (Δt = dt = 0.015) or "model" (Δt = model timestep = 0.003, PEARL/VariBAD).
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
        forward_reward_weight: 0.25 (PEARL / VariBAD; Humanoid-v5's own default is 1.25).
        **kwargs: passed to gymnasium's ``HumanoidEnv`` (defaults: ctrl 0.1, contact 5e-7 capped at 10,
            healthy_reward 5.0, healthy_z_range (1, 2)).
    """

    task_class = AngleTask

    def __init__(self, *, velocity_dt: str = "env", task_seed: int | None = None,
                 forward_reward_weight: float = 0.25, **kwargs):
        if velocity_dt not in VELOCITY_DT:
            raise ValueError(f"velocity_dt = {velocity_dt!r} is not allowed; allowed values: {VELOCITY_DT}")
        self.velocity_dt = velocity_dt
        HumanoidEnv.__init__(self, forward_reward_weight=forward_reward_weight, **kwargs)
        utils.EzPickle.__init__(self, velocity_dt=velocity_dt, task_seed=task_seed,
                                forward_reward_weight=forward_reward_weight, **kwargs)
        mass = self.model.body_mass
        self._mass_weights = mass / mass.sum()  # (nbody,): mass centre = weights @ xipos
        self._init_tasks(task_seed)

    def default_task(self) -> AngleTask:
        return AngleTask(0.0)

    def _draw_tasks(self, rng, n):
        return [AngleTask(a) for a in rng.uniform(0.0, 2 * math.pi, size=n)]

    def _check_task(self, task):
        check_range(task, "angle", low=0.0, high=2 * math.pi)

    def _apply_task(self, task):
        self._unit = (math.cos(task.angle), math.sin(task.angle))

    def _mass_center_xy(self) -> np.ndarray:
        return self._mass_weights @ self.data.xipos[:, :2]  # (2,)

    def step(self, action):
        xy_before = self._mass_center_xy()
        self.do_simulation(action, self.frame_skip)
        xy_after = self._mass_center_xy()
        delta_t = self.dt if self.velocity_dt == "env" else self.model.opt.timestep
        vx, vy = (xy_after - xy_before) / delta_t
        forward = self._forward_reward_weight * (self._unit[0] * vx + self._unit[1] * vy)
        healthy = self.healthy_reward
        ctrl_cost = self.control_cost(action)
        contact_cost = self.contact_cost
        reward = forward + healthy - ctrl_cost - contact_cost
        terminated = self._terminate_when_unhealthy and not self.is_healthy
        info = {"x_position": self.data.qpos[0], "y_position": self.data.qpos[1], "x_velocity": vx,
                "y_velocity": vy, "reward_forward": forward, "reward_ctrl": -ctrl_cost,
                "reward_contact": -contact_cost, "reward_survive": healthy, "task": self._task_array}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, False, info
