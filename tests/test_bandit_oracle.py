"""The memory oracle: on the bandit (one paying arm, one pull per episode, a constant observation) only memory
across episodes beats chance without a gradient step.

RL² (``memory="trial"``, ``inner_steps=0``) with a gru must reach a high mean reward on episodes 2..n of a trial on
held-out tasks, while the same gru with episode memory and no inner step stays at chance (2 arms: 0.5).
The held-out tasks are ``test_tasks(20)`` (both arms, 10 each); the evaluation samples (explore=True), a fresh trial
per task, as ``metarl evaluate`` does with K = 0.

Calibration (2 arms, gru width 16, 8 episodes per task on 1 sub-env, meta-batch 10, lr 1e-2, gamma 0.9, float32),
held-out mean reward on episodes 2..n after 20 / 40 / 60 iterations:
RL² seed 0: 0.50 / 0.90 / 1.00; seed 1: 0.96 / 0.92 / 0.97; seed 2: 0.81 / 0.95 / 0.99; seed 3: 0.93 / 0.96 / 1.00;
seed 4: 0.50 / 0.46 / 0.49 in one run, 0.88 / 0.93 / 0.93 (then 0.96-1.00 up to 160) in a rerun: float32 training
is not bit-reproducible across runs here, and a run can sit at chance for a while, hence 100 iterations in the slow
test (seeds 0-4 all passed it once at 100 iterations). Episode memory, every seed: 0.46-0.52 throughout (chance). The always-run test trains seed 0 for 40
iterations with a lower bar (0.8).
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from conftest import init_ray_with_tests_on_path

from rllib_ext.algorithm import MAMLConfig
from rllib_ext.jobs import TaskJob

EPISODES = 8


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()
    yield
    ray.shutdown()


def config(memory: str, seed: int) -> MAMLConfig:
    return (
        MAMLConfig()
        .meta(task="bandit", backbone="gru", width=16, meta_batch_size=10, episodes_per_task=EPISODES, inner_steps=0,
              outer_steps=5, memory=memory)
        .training(lr=1e-2, gamma=0.9)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .debugging(seed=seed)
    )


def held_out_reward_after_first_episode(algo) -> float:
    """Mean reward on episodes 2..n of one trial per held-out task (K = 0)."""
    runner = algo.env_runner_group.local_env_runner
    family = runner.env.unwrapped.envs[0].unwrapped
    rewards = []
    for i, task in enumerate(family.test_tasks(20)):
        res = runner.run_task(TaskJob(task=task, task_index=0, iteration=-1, seed=10_000 + i, inner_steps=0,
                                      episodes_per_task=EPISODES))
        rewards.append(res.query.rewards[1:, 0].mean())
    return float(np.mean(rewards))


def train_and_evaluate(memory: str, seed: int, iterations: int) -> float:
    algo = config(memory, seed).build_algo()
    try:
        for _ in range(iterations):
            algo.train()
        return held_out_reward_after_first_episode(algo)
    finally:
        algo.stop()


@pytest.mark.timeout(280)
def test_rl2_remembers_the_arm_episode_memory_cannot():
    rl2 = train_and_evaluate("trial", seed=0, iterations=40)
    episode = train_and_evaluate("episode", seed=0, iterations=40)
    assert rl2 >= 0.8, f"RL² on the bandit: {rl2:.3f} on episodes 2..n (chance 0.5)"
    assert episode <= 0.6, f"episode memory cannot know the arm: {episode:.3f} (chance 0.5)"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(5))
def test_rl2_reaches_090_on_every_seed_episode_memory_stays_at_chance(seed):
    rl2 = train_and_evaluate("trial", seed=seed, iterations=100)
    episode = train_and_evaluate("episode", seed=seed, iterations=100)
    assert rl2 >= 0.9, f"seed {seed}: RL² {rl2:.3f} on episodes 2..n"
    assert episode <= 0.6, f"seed {seed}: episode memory {episode:.3f}"
