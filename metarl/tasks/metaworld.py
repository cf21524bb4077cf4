"""Meta-World (Farama, ``metaworld==3.1.1``) ML1 and ML10 as task families: Sawyer-arm manipulation, metric = success.

A Meta-World *task* is an env class plus a goal configuration ``rand_vec`` (object and goal positions, 3 or 6
numbers) drawn by the benchmark constructor, which is seeded (``metaworld.ML1(env_name, seed=benchmark_seed)``):

- ``MetaWorldML1Env`` (``metaworld-ml1-reach``, ``-push``, ``-pick-place``): one env class; ``sample_tasks`` draws
  from its 50 training goal configurations, ``test_tasks`` from its 50 held-out ones.
- ``MetaWorldML10Env`` (``metaworld-ml10``): ``sample_tasks`` draws from the 10 training classes x 50 goals
  (classes balanced within a draw), ``test_tasks`` from the 5 held-out classes x 50 goals (classes interleaved).

The family holds one Meta-World env per class, built on the first task of that class and kept (switch cost:
``benchmarks/metaworld_switch.py``). ``set_task`` calls Meta-World's ``set_task``; ``reset`` applies the goal (as in
Meta-World, where ``set_task`` must precede ``reset``). Observation: Meta-World's flat 39-d Box (goal hidden, as in
its ML benchmarks); action: ``Box(-1, 1, (4,))``; ``info["success"]`` is 1.0 on steps where the task is solved (an
episode succeeds if any step does). Episodes last at most ``MAX_HORIZON`` = 500 steps (Meta-World's
``max_path_length``); longer horizons are rejected (``metarl.tasks.make``) and stepping past 500 raises.

Seeding follows Meta-World: ``benchmark_seed`` goes to the benchmark constructor (fixes the goal sets, default 0, so
every process builds the same sets), ``reset(seed=s)`` calls the Meta-World env's ``seed(s)``; with the goal fixed
by the task, an episode is a deterministic function of the task and the actions.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces, utils

from metarl.tasks.base import TEST_STREAM, MetaEnv, Task, _check_n, _real, task_stream

MAX_HORIZON = 500  #: Meta-World's max_path_length: its envs raise when stepped past it
ML1_ENVS = ("reach-v3", "push-v3", "pick-place-v3")  #: the registered ML1 families (any ML1 name works as env_name)


@dataclass(frozen=True)
class MetaWorldTask(Task):
    """One Meta-World task: the index of its env class in the family's ``env_names`` and its goal configuration."""

    env: float  #: index into ``env_names`` (ML1: 0; ML10: 0-9 training classes, 10-14 held-out classes)
    rand_vec: tuple[float, ...]  #: Meta-World's ``rand_vec``: object/goal positions (3 or 6 numbers)

    def __post_init__(self) -> None:
        env = _real("MetaWorldTask", "env", self.env)
        if not (env >= 0 and env == int(env)):
            raise ValueError(f"MetaWorldTask.env must be an integer >= 0, got {self.env!r}")
        try:
            values = tuple(_real("MetaWorldTask", "rand_vec", v) for v in self.rand_vec)
        except TypeError:
            raise ValueError(f"MetaWorldTask.rand_vec must be a sequence of numbers, got {self.rand_vec!r}") from None
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "rand_vec", values)

    def as_array(self) -> np.ndarray:
        """``[env, *rand_vec]``, float64 (length 4 or 7)."""
        return np.array([self.env, *self.rand_vec], dtype=np.float64)

    @classmethod
    def from_array(cls, array: Any) -> MetaWorldTask:
        values = np.asarray(array, dtype=np.float64).ravel().tolist()
        if len(values) < 2:
            raise ValueError(f"MetaWorldTask.from_array: expected [env, *rand_vec], got {values}")
        return cls(values[0], tuple(values[1:]))


@dataclass(frozen=True)
class _Sets:
    """A benchmark's goal sets as typed tasks, and the Meta-World task object of each."""

    env_names: tuple[str, ...]
    train: tuple[MetaWorldTask, ...]
    test: tuple[MetaWorldTask, ...]
    native: dict  # MetaWorldTask -> metaworld.types.Task


@functools.lru_cache(maxsize=8)
def benchmark_sets(benchmark: str, env_name: str | None, seed: int) -> _Sets:
    """Build ``metaworld.ML1(env_name, seed)`` or ``metaworld.ML10(seed)`` once per process (ML10: ~10 s)."""
    import metaworld

    bench = metaworld.ML1(env_name, seed=seed) if benchmark == "ML1" else metaworld.ML10(seed=seed)
    names = tuple(dict.fromkeys([*bench.train_classes, *bench.test_classes]))
    native: dict = {}

    def typed(mw_tasks) -> tuple[MetaWorldTask, ...]:
        out = []
        for mw in mw_tasks:
            task = MetaWorldTask(names.index(mw.env_name), tuple(pickle.loads(mw.data)["rand_vec"]))
            native[task] = mw
            out.append(task)
        return tuple(out)

    return _Sets(names, typed(bench.train_tasks), typed(bench.test_tasks), native)


class _MetaWorldFamily(MetaEnv, gym.Env, utils.EzPickle):
    """Shared by ML1 and ML10: one Meta-World env per class, the task API over the benchmark's goal sets."""

    metadata = {"render_modes": []}
    task_class = MetaWorldTask
    reports_success = True  #: the sampler records ``info["success"]`` per episode for envs that declare this
    max_path_length = MAX_HORIZON

    def _init_family(self, benchmark: str, env_name: str | None, benchmark_seed: int, task_seed: int | None) -> None:
        if isinstance(benchmark_seed, bool) or not isinstance(benchmark_seed, (int, np.integer)) or benchmark_seed < 0:
            raise ValueError(f"benchmark_seed must be an int >= 0, got {benchmark_seed!r}")
        self.benchmark_seed = int(benchmark_seed)
        self._sets = benchmark_sets(benchmark, env_name, self.benchmark_seed)
        self.env_names = self._sets.env_names
        self._envs: dict[int, Any] = {}  # class index -> Meta-World env, built on first use
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._init_tasks(task_seed)
        space = self._env.sawyer_observation_space  # the same 39-d Box for every class (goal hidden)
        self.observation_space = spaces.Box(space.low, space.high, dtype=np.float64)

    # ---- task hooks ------------------------------------------------------------------------------------------
    def default_task(self) -> MetaWorldTask:
        return self._sets.train[0]

    def _check_task(self, task: MetaWorldTask) -> None:
        if not 0 <= task.env < len(self.env_names):
            raise ValueError(f"MetaWorldTask.env = {task.env!r} is not allowed; allowed: 0..{len(self.env_names) - 1} "
                             f"({', '.join(self.env_names)})")
        if task not in self._sets.native:
            name = self.env_names[int(task.env)]
            raise ValueError(f"MetaWorldTask.rand_vec = {task.rand_vec!r} is not allowed for {name}: allowed are the "
                             f"training and held-out goal configurations of benchmark_seed {self.benchmark_seed} "
                             "(from sample_tasks/test_tasks)")

    def _apply_task(self, task: MetaWorldTask) -> None:
        index = int(task.env)
        if index not in self._envs:
            self._envs[index] = _make_env(self.env_names[index])
        self._env = self._envs[index]
        self._env.set_task(self._sets.native[task])

    def test_tasks(self, n: int = 40, seed: int = 1) -> list[Task]:
        """``n`` of the held-out tasks: per class a seeded permutation of its goals, classes interleaved (so any
        ``n`` covers the held-out classes evenly); past the end of the set the order repeats."""
        _check_n(n)
        rng = task_stream(seed, TEST_STREAM)
        by_class = [[t for t in self._sets.test if t.env == c] for c in sorted({t.env for t in self._sets.test})]
        orders = [[goals[i] for i in rng.permutation(len(goals))] for goals in by_class]
        ordered = [goals[i] for i in range(max(map(len, orders))) for goals in orders if i < len(goals)]
        return [ordered[i % len(ordered)] for i in range(n)]

    # ---- gymnasium -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)  # Meta-World's seeding (its reset ignores the seed)
        obs, _ = self._env.reset()
        return obs, {"task": self._task_array}

    def step(self, action):
        if self._env.curr_path_length >= MAX_HORIZON:
            raise ValueError(f"Meta-World episodes last at most {MAX_HORIZON} steps (max_path_length): reset the env "
                             f"(a horizon / max_episode_steps above {MAX_HORIZON} is not allowed)")
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        info["task"] = self._task_array
        return obs, float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def _make_env(env_name: str):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS[env_name]()


class MetaWorldML1Env(_MetaWorldFamily):
    """ML1: one Meta-World env class, 50 training and 50 held-out goal configurations.

    Args:
        env_name: a Meta-World v3 env name (registered families: ``reach-v3``, ``push-v3``, ``pick-place-v3``).
        benchmark_seed: seed of ``metaworld.ML1(env_name, seed=...)`` (the goal sets; default 0).
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
    """

    def __init__(self, *, env_name: str = "reach-v3", benchmark_seed: int = 0, task_seed: int | None = None):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if env_name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"env_name = {env_name!r} is not a Meta-World v3 env; allowed: "
                             f"{', '.join(ALL_V3_ENVIRONMENTS)}")
        utils.EzPickle.__init__(self, env_name=env_name, benchmark_seed=benchmark_seed, task_seed=task_seed)
        self._init_family("ML1", env_name, benchmark_seed, task_seed)

    def _draw_tasks(self, rng: np.random.Generator, n: int) -> list[Task]:
        train = self._sets.train
        return [train[i] for i in rng.integers(len(train), size=n)]


class MetaWorldML10Env(_MetaWorldFamily):
    """ML10: 10 training env classes x 50 goals; held out: 5 other classes x 50 goals.

    Args:
        benchmark_seed: seed of ``metaworld.ML10(seed=...)`` (the goal sets; default 0).
        task_seed: seed of the env's own task generator (None: fresh OS entropy).
    """

    def __init__(self, *, benchmark_seed: int = 0, task_seed: int | None = None):
        utils.EzPickle.__init__(self, benchmark_seed=benchmark_seed, task_seed=task_seed)
        self._init_family("ML10", None, benchmark_seed, task_seed)

    def _draw_tasks(self, rng: np.random.Generator, n: int) -> list[Task]:
        """Classes balanced (each of the 10 appears ``n // 10`` or ``n // 10 + 1`` times), goals uniform."""
        classes = sorted({t.env for t in self._sets.train})
        goals = {c: [t for t in self._sets.train if t.env == c] for c in classes}
        picked = rng.permutation(np.resize(np.arange(len(classes)), n)) if n else []
        return [goals[classes[c]][rng.integers(len(goals[classes[c]]))] for c in picked]

