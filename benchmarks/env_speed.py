"""Steps/s of each MuJoCo task family vs the plain gymnasium env it builds on, measured side by side.

How to run::

    .venv/bin/python benchmarks/env_speed.py               # ~45 s of CPU (~95 s wall on a busy 2-core VM)
    .venv/bin/python benchmarks/env_speed.py --steps 500 --repeats 3   # quick look

What it does: for each (family, plain env) pair it pre-generates actions, then alternates timed runs of
``env.unwrapped.step`` (CPU time of this process) over the same actions (``repeats`` times each, interleaved so both see the same machine
load), resetting every ``--horizon`` steps and ignoring termination (the physics is identical, so both do the same
work). It prints the median steps/s of each and the overhead ``family_time / plain_time - 1``.

What to expect (2-core AMD EPYC VM, mujoco 3.3.0, gymnasium 1.2.2, CPU steps/s; BENCHMARKS.md has the table and
the earlier mujoco 4.0.0 one): overhead within about ±10% for every family; HalfCheetah ~ 25 k steps/s, Ant ~ 4.3 k,
Humanoid ~ 2.4 k, Meta-World reach/push ~ 4-5 k. The Ant and Humanoid families are a little faster than the plain
envs (they read the torso / mass centre from arrays instead of ``data.body(...)`` accessors and build smaller
infos); the Meta-World families wrap Meta-World's env (plain = the same class with the same task). Debug
in-process: ``from env_speed import time_steps``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import mujoco
import numpy as np

import metarl.tasks as T

PAIRS = [  # (family CLI name, options, plain gymnasium id, plain kwargs)
    ("halfcheetah-vel", {}, "HalfCheetah-v5", {}),
    ("halfcheetah-dir", {}, "HalfCheetah-v5", {}),
    ("ant-dir", {}, "Ant-v5", {}),
    ("ant-dir", {"direction_2d": True}, "Ant-v5", {}),
    ("ant-goal", {}, "Ant-v5", {"exclude_current_positions_from_observation": False}),
    ("humanoid-dir", {}, "Humanoid-v5", {}),
    ("metaworld-ml1-reach", {}, "metaworld:reach-v3", {}),  # plain: Meta-World's own env class, same task
    ("metaworld-ml1-push", {}, "metaworld:push-v3", {}),
]


def plain_env(plain_id: str, kwargs: dict, family: gym.Env) -> gym.Env:
    """The plain gymnasium env, or (``metaworld:<name>``) Meta-World's env class with the family's current task."""
    if not plain_id.startswith("metaworld:"):
        return gym.make(plain_id, **kwargs).unwrapped
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[plain_id.split(":", 1)[1]](**kwargs)
    env.set_task(family._sets.native[family.get_task()])
    return env


def time_steps(env: gym.Env, actions: np.ndarray, *, horizon: int) -> float:
    """CPU seconds of this process for ``len(actions)`` calls of ``env.step`` (resets every ``horizon`` steps
    included). CPU time, not wall time, so that other jobs on a shared machine inflate neither side."""
    env.reset(seed=0)
    start = time.process_time()
    for i, action in enumerate(actions):
        if i % horizon == horizon - 1:
            env.reset()
        env.step(action)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per env (interleaved)")
    parser.add_argument("--horizon", type=int, default=200, help="reset every this many steps")
    args = parser.parse_args()
    mujoco.set_mju_user_warning(lambda message: None)  # half_cheetah.xml's deprecation warning: no MUJOCO_LOG.TXT

    print(f"mujoco {mujoco.__version__}, gymnasium {gym.__version__}")
    print(f"{'family':34s} {'plain env':14s} {'family steps/s':>15s} {'plain steps/s':>14s} {'overhead':>9s}")
    for name, options, plain_id, plain_kwargs in PAIRS:
        family = T.make(name, task_seed=0, **options).unwrapped
        family.set_task(family.sample_tasks(1, seed=0)[0])
        plain = plain_env(plain_id, plain_kwargs, family)
        rng = np.random.default_rng(0)
        actions = rng.uniform(plain.action_space.low, plain.action_space.high,
                              size=(args.steps, *plain.action_space.shape)).astype(np.float32)
        times: dict[str, list[float]] = {"family": [], "plain": []}
        time_steps(family, actions[:200], horizon=args.horizon)  # warm up
        time_steps(plain, actions[:200], horizon=args.horizon)
        for _ in range(args.repeats):
            times["family"].append(time_steps(family, actions, horizon=args.horizon))
            times["plain"].append(time_steps(plain, actions, horizon=args.horizon))
        family_s, plain_s = statistics.median(times["family"]), statistics.median(times["plain"])
        label = name + ("" if not options else " " + ",".join(f"{k}={v}" for k, v in options.items()))
        print(f"{label:34s} {plain_id:14s} {args.steps / family_s:15,.0f} {args.steps / plain_s:14,.0f} "
              f"{family_s / plain_s - 1:+9.1%}")


if __name__ == "__main__":
    main()
