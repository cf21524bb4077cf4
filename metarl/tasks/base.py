"""Tasks as typed values and the task API shared by every family (`MetaEnv`).

A *task* is a plain, frozen, picklable dataclass (``VelocityTask(velocity=1.3)``) with ``as_array()`` for logging
and serialisation. A *family* is a gymnasium env that also is a task distribution: it owns a seeded
``numpy.random.Generator`` and offers::

    env = gymnasium.make("metarl/HalfCheetahVel-v0").unwrapped
    train = env.sample_tasks(20, seed=0)        # deterministic for a seed; seed=None continues env's own generator
    test = env.test_tasks()                     # 40 held-out tasks, seed 1, from an independent stream
    env.task = train[3]                         # validating setter (also: env.set_task / env.get_task)
    env.reset(seed=0)                           # reset keeps the task

Streams: ``SeedSequence(seed).spawn(2)`` gives two independent children, child 0 for training draws and child 1
for the test set, so the held-out tasks never depend on how many training tasks were drawn (never the global
``np.random``: parallel workers would draw duplicates, as the VariBAD README warns).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TRAIN_STREAM, TEST_STREAM = 0, 1


def task_stream(seed: int | None, which: int) -> np.random.Generator:
    """Generator of child ``which`` (0 train, 1 test) of ``SeedSequence(seed)``; seed None -> fresh entropy."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[which])


def _real(cls_name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{cls_name}.{field} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


@dataclass(frozen=True)
class Task:
    """Base of all tasks: frozen dataclass of float fields (a 2D point is a ``tuple[float, float]``)."""

    def __post_init__(self) -> None:  # coerce numpy scalars to float so that equal tasks hash and pickle alike
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (tuple, list, np.ndarray)):
                if len(value) != 2:
                    raise ValueError(f"{type(self).__name__}.{f.name} must be an (x, y) pair, got {value!r}")
                coerced: Any = tuple(_real(type(self).__name__, f.name, v) for v in value)
            else:
                coerced = _real(type(self).__name__, f.name, value)
            object.__setattr__(self, f.name, coerced)

    def as_array(self) -> np.ndarray:
        """All fields flattened in declaration order, float64, shape (task_dim,)."""
        return np.array([v for f in dataclasses.fields(self) for v in np.atleast_1d(getattr(self, f.name))],
                        dtype=np.float64)

    @classmethod
    def from_array(cls, array: Any) -> Task:
        """Inverse of ``as_array``."""
        values = np.asarray(array, dtype=np.float64).ravel().tolist()
        args, i = [], 0
        for f in dataclasses.fields(cls):
            width = 2 if "tuple" in str(f.type) else 1
            args.append(tuple(values[i:i + width]) if width == 2 else values[i])
            i += width
        if i != len(values):
            raise ValueError(f"{cls.__name__}.from_array: expected {i} numbers, got {len(values)}: {values}")
        return cls(*args)


@dataclass(frozen=True)
class VelocityTask(Task):
    velocity: float  #: target forward velocity v* (m/s)


@dataclass(frozen=True)
class DirectionTask(Task):
    direction: float  #: +1.0 (forward) or -1.0 (backward) along x


@dataclass(frozen=True)
class AngleTask(Task):
    angle: float  #: direction of motion θ in radians, unit vector (cos θ, sin θ)


@dataclass(frozen=True)
class GoalTask(Task):
    goal: tuple[float, float]  #: goal position (x, y)


@dataclass(frozen=True)
class MassTask(Task):
    mass: float  #: pendulum mass


@dataclass(frozen=True)
class ArmTask(Task):
    arm: float  #: index of the paying arm (an integer stored as a float, like every task field)


def check_range(task: Task, field: str, *, low: float, high: float) -> None:
    """Raise ValueError unless ``low <= task.field <= high`` (NaN fails)."""
    value = getattr(task, field)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{type(task).__name__}.{field} = {value!r} is not allowed; allowed range: [{low}, {high}]")


def check_choice(task: Task, field: str, choices: tuple[float, ...]) -> None:
    value = getattr(task, field)
    if value not in choices:
        raise ValueError(f"{type(task).__name__}.{field} = {value!r} is not allowed; allowed values: {choices}")


def check_range_pair(pair: Any, name: str, *, low: float = -math.inf, high: float = math.inf) -> tuple[float, float]:
    """Validate an option ``(lo, hi)`` with ``low <= lo < hi <= high``; returns it as floats."""
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {pair!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo < hi <= high):
        raise ValueError(f"{name} = {pair!r} is not allowed; need {low} <= low < high <= {high}")
    return lo, hi


class MetaEnv:
    """Mixin: the task API of a family. A family sets ``task_class`` and implements the four hooks.

    Hooks: ``default_task()``, ``_draw_tasks(rng, n)``, ``_check_task(task)`` (ranges; the type is checked here),
    ``_apply_task(task)`` (cache what ``step`` needs as plain floats/arrays: no Task objects in the hot loop).
    ``two_tasks`` marks the direction families whose train and test sets are the same two tasks.
    """

    task_class: type[Task]
    two_tasks: bool = False

    def _init_tasks(self, task_seed: int | None) -> None:
        """Call at the end of ``__init__``: own generator (train child of ``SeedSequence(task_seed)``), default task."""
        self._task_rng = task_stream(task_seed, TRAIN_STREAM)
        self.set_task(self.default_task())

    # ---- hooks -------------------------------------------------------------------------------------------------
    def default_task(self) -> Task:
        raise NotImplementedError

    def _draw_tasks(self, rng: np.random.Generator, n: int) -> list[Task]:
        raise NotImplementedError

    def _check_task(self, task: Task) -> None:
        raise NotImplementedError

    def _apply_task(self, task: Task) -> None:
        raise NotImplementedError

    # ---- API -----------------------------------------------------------------------------------------------------
    def sample_tasks(self, n: int, *, seed: int | None = None) -> list[Task]:
        """``n`` training tasks: from ``SeedSequence(seed)``'s train child, or (seed None) the env's own generator."""
        _check_n(n)
        rng = self._task_rng if seed is None else task_stream(seed, TRAIN_STREAM)
        return self._draw_tasks(rng, n)

    def all_tasks(self) -> list[Task] | None:
        """Every task, for families with a small finite task set (train and test then share tasks); else None."""
        return None

    def test_tasks(self, n: int = 40, seed: int = 1) -> list[Task]:
        """The fixed held-out set: ``n`` tasks from the test child of ``SeedSequence(seed)`` (MAML paper: 40, seed 1).

        Two-task families return both directions alternating, +1, -1, +1, ... (train = test, ``seed`` unused).
        """
        _check_n(n)
        if self.two_tasks:
            return direction_tasks(n)
        return self._draw_tasks(task_stream(seed, TEST_STREAM), n)

    def set_task(self, task: Task) -> None:
        """Validate and set the task; it stays until the next ``set_task`` (``reset`` keeps it)."""
        if not isinstance(task, self.task_class):
            raise ValueError(f"task must be a {self.task_class.__name__} for {type(self).__name__}, "
                             f"got {task!r} ({type(task).__name__})")
        self._check_task(task)
        array = task.as_array()
        array.flags.writeable = False  # shared by every step's info["task"]
        self._task, self._task_array = task, array
        self._apply_task(task)

    def get_task(self) -> Task:
        return self._task

    @property
    def task(self) -> Task:
        """The current task; assigning validates (works through ``VectorEnv.set_attr("task", [...])``)."""
        return self._task

    @task.setter
    def task(self, task: Task) -> None:
        self.set_task(task)

    # ---- pickling: constructor kwargs (EzPickle) + the task, not the simulator state ---------------------------
    def __getstate__(self) -> dict:
        state = super().__getstate__()  # EzPickle: {"_ezpickle_args", "_ezpickle_kwargs"}
        return {**state, "_metarl_task": self._task}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        task = state.pop("_metarl_task")
        super().__setstate__(state)
        self.set_task(task)


def _check_n(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")


def direction_tasks(n: int) -> list[DirectionTask]:
    """The literature's two-task test set, balanced: +1, -1, +1, ... (train = test = {+1, -1})."""
    return [DirectionTask(1.0 if i % 2 == 0 else -1.0) for i in range(n)]
