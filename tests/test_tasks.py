"""Oracle tests for metarl.tasks: rewards recomputed by hand from the simulator state, the protocol's distributions,
horizons, determinism, vector envs, validation, the checker, and registration in a fresh process."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import angle_normalize
from gymnasium.envs.mujoco.humanoid_v5 import mass_center

import metarl.tasks as T
from metarl.tasks import AngleTask, DirectionTask, GoalTask, MassTask, VelocityTask, check_task_distribution
from metarl.tasks.navigation import Navigation2DEnv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEVER_TERMINATE = ["bandit", "halfcheetah-vel", "halfcheetah-dir", "ant-goal", "navigation-2d", "pendulum-mass"]


def family(name, **options):
    return T.make(name, task_seed=0, **options).unwrapped


def random_actions(env, steps, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(env.action_space, gym.spaces.Discrete):  # the bandit's arms
        return rng.integers(env.action_space.n, size=steps)
    if not np.all(np.isfinite(env.action_space.high)):  # Navigation2D: unbounded, exercise the clipping
        return rng.normal(0.0, 0.15, size=(steps, 2)).astype(np.float32)
    return rng.uniform(env.action_space.low, env.action_space.high, size=(steps, *env.action_space.shape))


# ---- rewards recomputed by hand from the state before and after each step ------------------------------------------
def snapshot(env):
    if hasattr(env, "data"):
        d = env.data
        root = d.joint("rootx").qpos if d.model.nq == 9 else d.joint(0).qpos[:2]  # cheetah slide x / free joint
        return dict(qpos=d.qpos.copy(), torso=root.copy(), cfrc=d.cfrc_ext.copy(), com=mass_center(env.model, d))
    if hasattr(env, "position"):
        return dict(pos=env.position.copy())
    return dict(state=np.array(env.state, dtype=np.float64))


def clipped_contact(s):
    return 5e-4 * np.sum(np.clip(s["cfrc"], -1, 1) ** 2)


def oracle_cheetah_vel(env, b, a, act):
    assert env.dt == pytest.approx(0.05)
    v = (a["torso"][0] - b["torso"][0]) / 0.05
    return -abs(v - env.task.velocity) - 0.05 * np.sum(act**2), False


def oracle_cheetah_dir(env, b, a, act):
    v = (a["torso"][0] - b["torso"][0]) / 0.05
    return env.task.direction * v - 0.05 * np.sum(act**2), False


def oracle_ant_dir(env, b, a, act):
    assert env.dt == pytest.approx(0.05)
    v = (a["torso"][:2] - b["torso"][:2]) / 0.05
    unit = (math.cos(env.task.angle), math.sin(env.task.angle)) if env.direction_2d else (env.task.direction, 0.0)
    healthy = 0.2 <= a["qpos"][2] <= 1.0
    reward = unit @ v - 0.5 * np.sum(act**2) - clipped_contact(a) + 1.0 * healthy
    return reward, not healthy


def oracle_ant_goal(env, b, a, act):
    return -np.abs(a["torso"][:2] - np.array(env.task.goal)).sum() - 0.1 * np.sum(act**2) - clipped_contact(a), False


def oracle_humanoid(env, b, a, act):
    delta_t = 0.015 if env.velocity_dt == "env" else 0.003
    v = (a["com"] - b["com"]) / delta_t
    healthy = 1.0 < a["qpos"][2] < 2.0
    contact = min(5e-7 * np.sum(a["cfrc"] ** 2), 10.0)
    reward = 0.25 * (math.cos(env.task.angle) * v[0] + math.sin(env.task.angle) * v[1]) - 0.1 * np.sum(act**2) \
        - contact + 5.0 * healthy
    return reward, not healthy


def oracle_navigation(env, b, a, act):
    pos = b["pos"] + np.clip(act.astype(np.float64), -0.1, 0.1)
    np.testing.assert_allclose(a["pos"], pos, atol=1e-12)
    return -np.linalg.norm(pos - np.array(env.task.goal)), False


def oracle_pendulum(env, b, a, act):
    th, thdot = b["state"]
    u = float(np.clip(act[0], -2.0, 2.0))
    new_thdot = np.clip(thdot + (3 * 10.0 / 2 * np.sin(th) + 3.0 / env.task.mass * u) * 0.05, -8, 8)
    np.testing.assert_allclose(a["state"], [th + new_thdot * 0.05, new_thdot], atol=1e-12)  # the mass is used
    return -(angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2), False


HAND_CASES = [
    ("halfcheetah-vel", {}, oracle_cheetah_vel),
    ("halfcheetah-vel", {"velocity_range": (0.0, 3.0)}, oracle_cheetah_vel),
    ("halfcheetah-dir", {}, oracle_cheetah_dir),
    ("ant-dir", {}, oracle_ant_dir),
    ("ant-dir", {"direction_2d": True}, oracle_ant_dir),
    ("ant-goal", {}, oracle_ant_goal),
    ("humanoid-dir", {}, oracle_humanoid),
    ("humanoid-dir", {"velocity_dt": "model"}, oracle_humanoid),
    ("navigation-2d", {}, oracle_navigation),
    ("pendulum-mass", {}, oracle_pendulum),
]


@pytest.mark.parametrize(("name", "options", "oracle"), HAND_CASES, ids=[f"{c[0]}{c[1]}" for c in HAND_CASES])
def test_reward_equals_hand_computation(name, options, oracle):
    env = family(name, **options)
    tasks = env.sample_tasks(2, seed=5)
    actions = random_actions(env, 50, seed=1)
    env.task = tasks[0]
    env.reset(seed=0)
    for i, act in enumerate(actions):
        if i == 25:
            env.task = tasks[1]  # mid-episode switch: the new task applies from this step on
        before = snapshot(env)
        _, reward, terminated, truncated, info = env.step(act)
        expected, expected_terminated = oracle(env, before, snapshot(env), act)
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9), f"step {i}"
        assert terminated == expected_terminated and not truncated
        terms = sum(v for k, v in info.items() if k.startswith("reward_"))
        assert terms == pytest.approx(reward, rel=1e-9, abs=1e-9)
        np.testing.assert_array_equal(info["task"], env.task.as_array())
        if terminated:
            env.reset(seed=i)


# ---- the task changes the reward the way the protocol says --------------------------------------------------------
def rollout(env, task, actions, seed=0):
    env.task = task
    env.reset(seed=seed)
    return [env.step(a) for a in actions]


def test_halfcheetah_dir_flips_the_sign_of_the_velocity_term():
    env = family("halfcheetah-dir")
    actions = random_actions(env, 20)
    forward = rollout(env, DirectionTask(1.0), actions)
    backward = rollout(env, DirectionTask(-1.0), actions)
    for f, b in zip(forward, backward):
        np.testing.assert_array_equal(f[0], b[0])  # same trajectory
        assert b[4]["reward_forward"] == -f[4]["reward_forward"] != 0.0
        assert f[1] + b[1] == pytest.approx(2 * f[4]["reward_ctrl"])


def test_ant_goal_reward_is_highest_at_the_goal_and_observes_xy():
    env = family("ant-goal")
    zero = np.zeros((1, 8))
    obs, _, _, _, info = rollout(env, GoalTask((0.0, 0.0)), zero)[0]
    xy = np.array([info["x_position"], info["y_position"]])
    np.testing.assert_array_equal(obs[:2], env.data.qpos[:2])  # x, y are observed
    np.testing.assert_array_equal(obs[:2], xy)
    at_goal = rollout(env, GoalTask(tuple(xy)), zero)[0][1]
    for offset in [(0.5, 0.0), (0.0, -0.3), (1.0, 1.0), (-0.2, 0.1)]:
        away = rollout(env, GoalTask(tuple(xy + offset)), zero)[0][1]
        assert away == pytest.approx(at_goal - np.abs(offset).sum(), abs=1e-12) and away < at_goal
    assert env.observation_space.shape == (107,) and family("ant-dir").observation_space.shape == (105,)


def test_humanoid_model_dt_scales_the_direction_term_by_five():
    envs = [family("humanoid-dir"), family("humanoid-dir", velocity_dt="model")]
    results = [rollout(e, AngleTask(1.0), random_actions(e, 5)) for e in envs]
    for a, b in zip(*results):
        assert b[4]["reward_forward"] == pytest.approx(5 * a[4]["reward_forward"], rel=1e-9)


# ---- distributions -------------------------------------------------------------------------------------------------
def test_ant_goal_goals_are_uniform_on_the_disk_of_radius_3():
    n = 4000
    goals = np.array([t.goal for t in family("ant-goal").sample_tasks(n, seed=0)])
    radius = np.linalg.norm(goals, axis=1)
    assert radius.max() <= 3.0
    for q in (0.1, 0.25, 0.5, 0.9):  # area fraction within r = 3 sqrt(q) is q; 4 binomial stds
        assert np.mean(radius <= 3 * math.sqrt(q)) == pytest.approx(q, abs=4 * math.sqrt(q * (1 - q) / n))
    quadrant = np.mean((goals[:, 0] > 0) & (goals[:, 1] > 0))
    assert quadrant == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / n))


@pytest.mark.parametrize(("velocity_range", "high"), [((0.0, 2.0), 2.0), ((0.0, 3.0), 3.0)])
def test_halfcheetah_vel_velocities_cover_the_range(velocity_range, high):
    v = np.array([t.velocity for t in family("halfcheetah-vel", velocity_range=velocity_range).sample_tasks(2000)])
    assert v.min() >= 0.0 and v.max() <= high
    assert v.min() < 0.02 * high and v.max() > 0.98 * high
    assert np.mean(v < high / 2) == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / 2000))


def test_other_distributions_stay_in_their_supports():
    nav = np.array([t.goal for t in family("navigation-2d").sample_tasks(1000, seed=0)])
    assert np.all(np.abs(nav) <= 0.5) and np.all(np.abs(nav).max(axis=0) > 0.48)
    mass = np.array([t.mass for t in family("pendulum-mass").sample_tasks(1000, seed=0)])
    assert mass.min() >= 0.5 and mass.max() <= 2.0 and mass.max() - mass.min() > 1.4
    angles = np.array([t.angle for t in family("humanoid-dir").sample_tasks(1000, seed=0)])
    assert angles.min() >= 0.0 and angles.max() <= 2 * math.pi and np.mean(angles < math.pi) == pytest.approx(0.5, 0.2)
    directions = family("ant-dir").sample_tasks(400, seed=0)
    assert set(directions) == {DirectionTask(1.0), DirectionTask(-1.0)}
    assert family("halfcheetah-dir").test_tasks(4) == [DirectionTask(d) for d in (1.0, -1.0, 1.0, -1.0)]


# ---- horizons, determinism, pickling -------------------------------------------------------------------------------
def episode_length(env, seed=0):
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(1, 10_000):
        if isinstance(env.action_space, gym.spaces.Discrete):  # the bandit's arms
            _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            if terminated or truncated:
                return t, terminated
            continue
        action = rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32)
        _, _, terminated, truncated, _ = env.step(np.clip(action, env.action_space.low, env.action_space.high))
        if terminated or truncated:
            return t, terminated


@pytest.mark.parametrize("name", T.names())
def test_episode_length_is_the_horizon(name):
    env = T.make(name)
    assert env.spec.max_episode_steps == T.horizon(name) == T.horizon(T.env_id(name))
    length, terminated = episode_length(env)
    if name in NEVER_TERMINATE:
        assert (length, terminated) == (T.horizon(name), False)
    else:  # truncated exactly at the horizon, or terminated earlier because the body left its healthy range
        assert terminated or length == T.horizon(name), (length, terminated)
        assert not terminated or not env.unwrapped.is_healthy


def test_horizon_option_and_navigation_termination_option():
    assert episode_length(T.make("halfcheetah-vel", horizon=100)) == (100, False)
    assert episode_length(gym.make("metarl/HalfCheetahDir-v0", max_episode_steps=200)) == (200, False)
    for terminate, expected in [(True, [False, True, False]), (False, [False, False, False])]:
        env = T.make("navigation-2d", terminate_at_goal=terminate)
        env.unwrapped.task = GoalTask((0.2, 0.0))
        env.reset()
        action = np.array([1.0, 0.0], np.float32)  # clipped to 0.1 per step: at the goal after 2 steps
        assert [env.unwrapped.step(action)[2] for _ in range(3)] == expected


@pytest.mark.parametrize("name", T.names())
def test_same_seed_gives_same_tasks_and_trajectory(name):
    a, b = family(name), family(name)
    assert a.sample_tasks(5) == b.sample_tasks(5) == T.make(name).unwrapped.sample_tasks(5, seed=0)
    task = a.sample_tasks(1, seed=3)[0]
    actions = random_actions(a, 10)
    for (oa, ra, *_), (ob, rb, *_) in zip(rollout(a, task, actions, seed=7), rollout(b, task, actions, seed=7)):
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb


def test_pickle_keeps_the_task_not_the_simulator_state():
    env = family("ant-goal")
    env.task = GoalTask((1.0, -2.0))
    env.reset(seed=0)
    for a in random_actions(env, 5):
        env.step(a)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.task == GoalTask((1.0, -2.0)) and clone._ctrl_cost_weight == 0.1
    assert not np.array_equal(clone.data.qpos, env.data.qpos)
    np.testing.assert_array_equal(clone.data.qpos, clone.init_qpos)


def test_task_values():
    task = GoalTask((np.float32(1.5), 2))
    assert task.goal == (1.5, 2.0) and isinstance(task.goal[0], float) and hash(task) == hash(GoalTask((1.5, 2.0)))
    assert task.as_array().dtype == np.float64 and GoalTask.from_array(task.as_array()) == task
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.goal = (0.0, 0.0)
    assert pickle.loads(pickle.dumps(VelocityTask(1.25))) == VelocityTask(1.25)
    np.testing.assert_array_equal(MassTask(1.5).as_array(), [1.5])


# ---- vector envs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["make_vec", "SyncVectorEnv"])
def test_per_sub_env_tasks_through_a_vector_env(how):
    if how == "make_vec":
        envs = gym.make_vec("metarl/HalfCheetahVel-v0", num_envs=3, vectorization_mode="sync")
    else:
        envs = gym.vector.SyncVectorEnv([lambda: gym.make("metarl/HalfCheetahVel-v0")] * 3)
    tasks = [VelocityTask(0.0), VelocityTask(1.0), VelocityTask(2.0)]
    envs.set_attr("task", tasks)
    assert list(envs.get_attr("task")) == tasks
    envs.reset(seed=[4, 4, 4])
    action = np.full((3, 6), 0.5, dtype=np.float32)
    for _ in range(3):
        _, reward, _, _, info = envs.step(action)
        np.testing.assert_array_equal(info["x_velocity"], info["x_velocity"][0])  # same physics in each sub-env
        expected = -np.abs(info["x_velocity"] - [0.0, 1.0, 2.0]) - 0.05 * np.sum(action.astype(np.float64) ** 2, axis=1)
        np.testing.assert_allclose(reward, expected, rtol=1e-12)
        np.testing.assert_array_equal(info["task"][:, 0], [0.0, 1.0, 2.0])
    assert len(set(reward.tolist())) == 3
    with pytest.raises(ValueError, match="velocity"):
        envs.set_attr("task", [VelocityTask(5.0)] * 3)


# ---- bad input -----------------------------------------------------------------------------------------------------
BAD = [  # (family, options, bad task, field, allowed-range text)
    ("halfcheetah-vel", {}, VelocityTask(2.5), "velocity", "[0.0, 2.0]"),
    ("halfcheetah-vel", {}, VelocityTask(float("nan")), "velocity", "[0.0, 2.0]"),
    ("halfcheetah-vel", {"velocity_range": (0.0, 3.0)}, VelocityTask(-0.1), "velocity", "[0.0, 3.0]"),
    ("halfcheetah-dir", {}, DirectionTask(0.5), "direction", "(-1.0, 1.0)"),
    ("ant-dir", {}, DirectionTask(float("nan")), "direction", "(-1.0, 1.0)"),
    ("ant-dir", {"direction_2d": True}, AngleTask(7.0), "angle", "[0.0, 6.28"),
    ("ant-goal", {}, GoalTask((3.0, 0.5)), "goal", "<= 3.0"),
    ("ant-goal", {}, GoalTask((float("nan"), 0.0)), "goal", "<= 3.0"),
    ("humanoid-dir", {}, AngleTask(-1.0), "angle", "[0.0, 6.28"),
    ("navigation-2d", {}, GoalTask((0.0, 0.6)), "goal", "[-0.5, 0.5]"),
    ("pendulum-mass", {}, MassTask(float("inf")), "mass", "[0.5, 2.0]"),
]


@pytest.mark.parametrize(("name", "options", "task", "field", "allowed"), BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_out_of_range_or_nan_task_is_rejected(name, options, task, field, allowed):
    env = family(name, **options)
    before = env.task
    with pytest.raises(ValueError, match=field) as error:
        env.task = task
    assert allowed in str(error.value) and env.task == before  # unchanged


@pytest.mark.parametrize("name", T.names())
def test_wrong_task_type_is_rejected(name):
    env = family(name)
    wrong = MassTask(1.0) if env.task_class is not MassTask else VelocityTask(1.0)
    for bad in (wrong, 1.0, env.task.as_array(), None):
        with pytest.raises(ValueError, match=f"must be a {env.task_class.__name__}"):
            env.set_task(bad)


def test_bad_options_and_names():
    with pytest.raises(ValueError, match="velocity") as error:
        T.make("halfcheetah-velocity")
    assert all(name in str(error.value) for name in T.names())
    with pytest.raises(ValueError, match="velocity_range"):
        T.make("halfcheetah-vel", velocity_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="velocity_dt"):
        T.make("humanoid-dir", velocity_dt="physics")
    with pytest.raises(ValueError, match="n must be"):
        family("navigation-2d").sample_tasks(-1)
    with pytest.raises(ValueError, match="VelocityTask.velocity must be a real number"):
        VelocityTask("fast")
    with pytest.raises(ValueError, match="horizon"):
        T.make("navigation-2d", horizon=0)


# ---- the checker ---------------------------------------------------------------------------------------------------
CHECK_CASES = [(name, {}) for name in T.names()] + [
    ("halfcheetah-vel", {"velocity_range": (0.0, 3.0)}), ("ant-dir", {"direction_2d": True}),
    ("humanoid-dir", {"velocity_dt": "model"}), ("navigation-2d", {"terminate_at_goal": True})]


@pytest.mark.parametrize(("name", "options"), CHECK_CASES, ids=[f"{c[0]}{c[1]}" for c in CHECK_CASES])
def test_check_task_distribution_passes(name, options):
    check_task_distribution(T.make(name, **options))


class IgnoresTask(Navigation2DEnv):  # broken families the checker must reject (module level: picklable)
    def _apply_task(self, task):
        self._goal = np.zeros(2)


class SharedStreams(Navigation2DEnv):
    def test_tasks(self, n=40, seed=1):
        return self.sample_tasks(n, seed=seed)


class LosesTaskWhenPickled(Navigation2DEnv):
    def __setstate__(self, state):
        state = dict(state)
        state.pop("_metarl_task")
        gym.utils.EzPickle.__setstate__(self, state)


def test_check_task_distribution_can_fail():
    for broken, message in [(IgnoresTask, "reward ignores the task"), (SharedStreams, "share tasks"),
                            (LosesTaskWhenPickled, "pickling lost the task")]:
        with pytest.raises(AssertionError, match=message):
            check_task_distribution(broken(task_seed=0))
    with pytest.raises(ValueError, match="MetaEnv"):
        check_task_distribution(gym.make("Pendulum-v1"))


# ---- registration in a fresh process -------------------------------------------------------------------------------
def test_registration_in_a_fresh_process():
    code = (
        "import sys, gymnasium as gym\n"
        "ids = %r\n"
        "for gym_id, steps in ids:\n"
        "    env = gym.make('metarl.tasks:' + gym_id)\n"
        "    assert env.spec.max_episode_steps == steps, (gym_id, env.spec.max_episode_steps)\n"
        "    print(type(env.unwrapped).__name__, env.unwrapped.get_task())\n"
        "assert 'ray' not in sys.modules\n"
    ) % [(T.env_id(n), T.horizon(n)) for n in T.names()]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/",
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Env ") == len(T.names()), result.stdout


def test_import_loads_neither_ray_nor_mujoco():
    code = "import sys, metarl.tasks; print(sorted(m for m in ('ray', 'mujoco', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stderr
