"""The bandit memory-oracle family: rewards by hand, the finite task set, options and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import metarl.tasks as T
from metarl.tasks import ArmTask, check_task_distribution


@pytest.mark.parametrize("num_arms", [2, 5])
def test_only_the_paying_arm_pays_one_pull_per_episode(num_arms):
    env = T.make("bandit", num_arms=num_arms, task_seed=0)
    assert env.spec.max_episode_steps == 1 and env.action_space == gym.spaces.Discrete(num_arms)
    for arm in range(num_arms):
        env.unwrapped.task = ArmTask(arm)
        for pull in range(num_arms):
            obs, _ = env.reset(seed=pull)
            np.testing.assert_array_equal(obs, [1.0])  # constant: nothing about the task
            obs2, reward, terminated, truncated, info = env.step(pull)
            assert (reward, terminated, truncated) == (1.0 if pull == arm else 0.0, False, True)
            np.testing.assert_array_equal(obs2, obs)
            np.testing.assert_array_equal(info["task"], [float(arm)])


def test_tasks_train_uniform_test_covers_every_arm():
    env = T.make("bandit", num_arms=3, task_seed=0).unwrapped
    assert env.all_tasks() == [ArmTask(0.0), ArmTask(1.0), ArmTask(2.0)]
    assert env.test_tasks(6) == [ArmTask(float(i % 3)) for i in range(6)]
    assert set(env.test_tasks()) == set(env.all_tasks())
    arms = np.array([t.arm for t in env.sample_tasks(3000, seed=0)])
    np.testing.assert_allclose(np.bincount(arms.astype(int)) / 3000, [1 / 3] * 3, atol=0.03)
    check_task_distribution(T.make("bandit", num_arms=3))


@pytest.mark.parametrize(("options", "match"), [({"num_arms": 1}, "num_arms = 1"), ({"num_arms": 2.5}, "num_arms"),
                                                ({"num_arms": True}, "num_arms")])
def test_bad_num_arms_is_named(options, match):
    with pytest.raises(ValueError, match=match):
        T.make("bandit", **options)


def test_bad_arm_and_action_are_named():
    env = T.make("bandit", task_seed=0).unwrapped
    for arm in (2.0, 0.5, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ArmTask.arm"):
            env.task = ArmTask(arm)
    env.reset()
    with pytest.raises(ValueError, match="not an arm"):
        env.step(2)
