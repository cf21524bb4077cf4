"""``--num-env-runners auto`` / ``--num-learners auto``: a layout of actors from the cores Ray sees.

A meta-iteration has two phases that never overlap: the EnvRunners sample and adapt (the Learners idle), then the
Learners meta-update (the runners idle). So on C cores both phases can each use all C cores:

    C = 1:  everything in the driver (0 remote runners, the local Learner)
    C >= 2: C remote EnvRunners (the meta-batch's tasks spread over them) and L remote Learners, L = the largest
            divisor of meta_batch_size that is <= C (the Learners shard the tasks and all-reduce the meta-gradient)

Each actor asks Ray for one CPU, so Ray is told 1 + C + L logical CPUs: the runners' and the Learners' CPUs are the
same cores, used one phase after the other. Measured in ``benchmarks/scaling.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class Layout:
    cores: int  # the cores the layout was picked for
    num_env_runners: int
    num_learners: int

    @property
    def ray_cpus(self) -> int:
        """Logical CPUs an embedded Ray needs: the driver, every runner, every Learner (one each)."""
        return 1 + self.num_env_runners + self.num_learners

    def describe(self) -> str:
        runners = f"{self.num_env_runners} remote EnvRunners" if self.num_env_runners else "sampling in the driver"
        learners = f"{self.num_learners} remote Learners" if self.num_learners else "the Learner in the driver"
        return f"layout for {self.cores} core(s): {runners}, {learners}"


def visible_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pick_layout(cores: int, *, meta_batch_size: int) -> Layout:
    """The layout of the module docstring for ``cores`` cores and a meta-batch of ``meta_batch_size`` tasks."""
    if not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores = {cores!r} must be an integer >= 1")
    if cores == 1:
        return Layout(cores, 0, 0)
    learners = max(d for d in range(1, min(cores, meta_batch_size) + 1) if meta_batch_size % d == 0)
    return Layout(cores, cores, learners if learners > 1 else 0)


def resolve(num_env_runners, num_learners, *, cores: int, meta_batch_size: int) -> tuple[int, int, Layout | None]:
    """Replace ``"auto"`` in either count by the picked layout's; returns (runners, learners, layout or None)."""
    if AUTO not in (num_env_runners, num_learners):
        return num_env_runners, num_learners, None
    layout = pick_layout(cores, meta_batch_size=meta_batch_size)
    runners = layout.num_env_runners if num_env_runners == AUTO else num_env_runners
    learners = layout.num_learners if num_learners == AUTO else num_learners
    return runners, learners, Layout(cores, runners, learners)
