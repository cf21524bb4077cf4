"""Cost of switching tasks on the ML10 family env (one env id, 15 Meta-World classes) vs the episodes a job samples.

How to run::

    .venv/bin/python benchmarks/metaworld_switch.py            # ~40 s of CPU (ML10's benchmark build is ~10 s)
    .venv/bin/python benchmarks/metaworld_switch.py --repeats 5

What it does: builds ``metarl.tasks.make("metaworld-ml10")`` (Meta-World's ``ML10(seed=0)`` goal sets, once per
process), then times, in CPU seconds of this process, ``set_task`` + ``reset`` for: the first task of each class
(the family builds that class's env: MuJoCo model load), another goal of the current class, and a class whose env
is already built; and one 500-step episode (random actions) for scale. A runner does one switch per task job and
then samples ``episodes_per_task`` (e.g. 10-20) whole episodes, so a switch costs well under one episode.

What to expect (2-core AMD EPYC VM, mujoco 3.3.0, CPU): family construction ~10 s (ML10's goal sets) + ~0.25 s per
class built; first switch to a class ~140 ms; later switches ~9 ms, about the cost of the ``reset`` they include
(Meta-World's reset moves the hand for 50 simulation steps), whether or not the class changes; one 500-step
episode ~120 ms. Debug in-process: ``from metaworld_switch import time_switches``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mujoco
import numpy as np

import metarl.tasks as T


def cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1e3 * (time.process_time() - start)


def time_switches(env, repeats: int) -> dict[str, list[float]]:
    """CPU ms of set_task + reset per kind of switch."""
    family = env.unwrapped
    tasks = family.sample_tasks(200, seed=0) + family.test_tasks(50)
    by_class: dict[float, list] = {}
    for t in tasks:
        by_class.setdefault(t.env, []).append(t)

    def switch(task):
        family.set_task(task)
        env.reset(seed=0)

    out: dict[str, list[float]] = {"first task of a class (builds its env)": [], "no switch (reset only)": [],
                                   "another goal, same class": [], "another class, env already built": []}
    for goals in by_class.values():
        out["first task of a class (builds its env)"].append(cpu_ms(lambda g=goals: switch(g[0])))
    classes = list(by_class)
    for r in range(repeats):
        for c, goals in by_class.items():
            out["no switch (reset only)"].append(cpu_ms(lambda: env.reset(seed=0)))
            out["another goal, same class"].append(cpu_ms(lambda g=goals, r=r: switch(g[1 + r % (len(g) - 1)])))
            other = by_class[classes[(classes.index(c) + 1) % len(classes)]]
            out["another class, env already built"].append(cpu_ms(lambda g=other: switch(g[0])))
    return out


def time_episode(env, *, steps: int = 500) -> float:
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 4)).astype(np.float32)

    def run():
        env.reset(seed=0)
        for a in actions:
            env.step(a)

    return cpu_ms(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="switches of each kind per class")
    args = parser.parse_args()
    mujoco.set_mju_user_warning(lambda message: None)
    start = time.process_time()
    env = T.make("metaworld-ml10", task_seed=0)
    print(f"mujoco {mujoco.__version__}; family construction (ML10 goal sets + first class): "
          f"{time.process_time() - start:.1f} s CPU")
    for kind, ms in time_switches(env, args.repeats).items():
        print(f"{kind:40s} median {statistics.median(ms):8.1f} ms   max {max(ms):8.1f} ms   (n={len(ms)})")
    episodes = [time_episode(env) for _ in range(3)]
    print(f"{'one 500-step episode (random actions)':40s} median {statistics.median(episodes):8.1f} ms")


if __name__ == "__main__":
    main()
