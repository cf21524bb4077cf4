"""``check_task_distribution(env)``: the contract every family must satisfy (like gymnasium's ``check_env``).

Checks, each raising ``AssertionError`` (or ``ValueError`` for a non-family) with a message naming what failed:

1. determinism: ``sample_tasks(n, seed=s)`` and ``test_tasks()`` repeat exactly; other seeds give other tasks;
2. set/get round trip: ``set_task``/``get_task``/``task``, ``reset`` keeps the task, ``info["task"]`` is
   ``task.as_array()``, ``Task.from_array(task.as_array()) == task``;
3. picklability: the task itself and the env (which keeps its task through pickling);
4. the reward depends on the task: same reset seed and actions, two tasks -> different rewards;
5. spaces do not change across tasks and observations lie in the observation space;
6. train and test streams are independent: the same seed gives disjoint train/test sets, and drawing training
   tasks does not move the test set. Two-task (direction) families are exempt: train = test = {-1, +1}; so are
   finite families (``all_tasks()`` not None, e.g. the bandit): train draws from that set, test covers all of it.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np

from metarl.tasks.base import DirectionTask, MetaEnv, Task


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"check_task_distribution: {message}")


def _rollout(env: MetaEnv, task: Task, actions: np.ndarray, *, seed: int) -> tuple[np.ndarray, list, list]:
    env.set_task(task)
    obs, _ = env.reset(seed=seed)
    observations, infos, rewards = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(float(reward))
        infos.append(info)
        if terminated or truncated:
            break
    return np.array(rewards), observations, infos


def _actions(space: gym.spaces.Space, *, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Discrete):
        return space.start + rng.integers(space.n, size=steps)
    low = np.where(np.isfinite(space.low), space.low, -1.0)
    high = np.where(np.isfinite(space.high), space.high, 1.0)
    return rng.uniform(low, high, size=(steps, *space.shape)).astype(space.dtype)


def check_task_distribution(env: gym.Env, *, seed: int = 0, n: int = 8, steps: int = 10) -> None:
    """Run all checks on ``env`` (a family or a wrapper around one); restores the env's task at the end."""
    family = env.unwrapped
    if not isinstance(family, MetaEnv):
        raise ValueError(f"env must be a metarl.tasks family (MetaEnv), got {type(family).__name__}")
    name, original = type(family).__name__, family.get_task()

    # 1. determinism
    train = family.sample_tasks(n, seed=seed)
    _require(len(train) == n and all(isinstance(t, family.task_class) for t in train),
             f"{name}.sample_tasks({n}) must return {n} {family.task_class.__name__}s, got {train!r}")
    _require(train == family.sample_tasks(n, seed=seed), f"{name}.sample_tasks(seed={seed}) is not deterministic")
    _require(family.test_tasks() == family.test_tasks(), f"{name}.test_tasks() is not deterministic")
    finite = family.all_tasks()
    if not family.two_tasks and finite is None:
        _require(train != family.sample_tasks(n, seed=seed + 1), f"{name}: seeds {seed} and {seed + 1} give the "
                 "same tasks")
        own = family.sample_tasks(n)
        _require(own != family.sample_tasks(n), f"{name}.sample_tasks(seed=None) does not advance the env's generator")

    # 2. set/get round trip, 5. spaces, info["task"]
    spaces = (family.observation_space, family.action_space)
    actions = _actions(family.action_space, steps=steps, seed=seed)
    for task in train[:3]:
        family.set_task(task)
        _require(family.get_task() == task and family.task == task, f"{name}: set_task({task}) then get_task() "
                 f"returned {family.get_task()}")
        _require(type(task).from_array(task.as_array()) == task, f"{name}: from_array(as_array()) changed {task}")
        _require(pickle.loads(pickle.dumps(task)) == task, f"{name}: {task} does not survive pickling")
        _, observations, infos = _rollout(family, task, actions[:2], seed=seed)
        _require(family.get_task() == task, f"{name}: reset/step changed the task {task} to {family.get_task()}")
        _require((family.observation_space, family.action_space) == spaces, f"{name}: spaces changed with {task}")
        for obs in observations:
            _require(family.observation_space.contains(obs), f"{name}: observation {obs!r} (dtype "
                     f"{np.asarray(obs).dtype}) is outside {family.observation_space} under {task}")
        for info in infos:
            _require(np.array_equal(info.get("task"), task.as_array()), f"{name}: info['task'] = "
                     f"{info.get('task')!r} is not {task}.as_array()")

    # 3. pickling keeps the task
    family.set_task(train[-1])
    clone = pickle.loads(pickle.dumps(family))
    try:
        _require(type(clone) is type(family) and clone.get_task() == train[-1],
                 f"{name}: pickling lost the task {train[-1]} (got {clone.get_task()})")
    finally:
        clone.close()

    # 4. the reward depends on the task
    first, second = (DirectionTask(1.0), DirectionTask(-1.0)) if family.two_tasks else (finite or train)[:2]
    rewards_a, _, _ = _rollout(family, first, actions, seed=seed)
    rewards_b, _, _ = _rollout(family, second, actions, seed=seed)
    k = min(len(rewards_a), len(rewards_b))
    _require(not np.allclose(rewards_a[:k], rewards_b[:k]), f"{name}: rewards under {first} and {second} are equal "
             f"over {k} steps with the same seed and actions: the reward ignores the task")

    # 6. train and test streams
    test = family.test_tasks(n, seed=seed)
    family.sample_tasks(3)
    _require(test == family.test_tasks(n, seed=seed), f"{name}: drawing training tasks moved the test set")
    if family.two_tasks:
        both = {DirectionTask(1.0), DirectionTask(-1.0)}
        _require(set(train) <= both and set(test) == both, f"{name}: a two-task family must train and test on "
                 f"{both}, got train {set(train)} and test {set(test)}")
    elif finite is not None:
        _require(set(train) <= set(finite) and set(test) == set(finite), f"{name}: a finite family must train on "
                 f"tasks of all_tasks() and test on all of them, got train {set(train)} and test {set(test)}")
    else:
        common = set(train) & set(test)
        _require(not common, f"{name}: train and test streams of seed {seed} share tasks {common}")
    family.set_task(original)
