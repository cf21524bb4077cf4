"""``--num-env-runners auto`` / ``--num-learners auto``: a layout of actors from the cores Ray sees.

A meta-iteration has two phases that never overlap: the EnvRunners sample and adapt (the Learners idle), then the
Learners meta-update (the runners idle). So on C cores both phases can each use all C cores:

    C = 1:  everything in the driver (0 remote runners, the local Learner, one torch thread)
    C >= 2: C remote EnvRunners (the meta-batch's tasks spread over them), and for the meta-update
            - a recurrent (or any non-mlp) backbone: L remote Learners, L = the largest divisor of meta_batch_size
              that is <= C (the Learners shard the tasks and all-reduce the meta-gradient), one thread each;
            - the mlp, or a meta-batch with no divisor in 2..C: the Learner in the driver on C torch threads (the
              driver only waits while the runners sample, so its threads use the cores the runners leave idle).

Why the backbone decides: the recurrent meta-update is a long chain of tiny ops (time loops), which torch's
intra-op threads do not speed up but sharding the tasks does; the mlp's update is a few larger matmuls, where a
second thread pays and a Learner group's fixed cost (batch transfer, all-reduce) does not. Measured on an idle
2-core machine (``benchmarks/scaling.py``, BENCHMARKS.md), iteration speedup over one core: gru 2.06x with 2
Learners vs 1.62x with the driver's 2 threads; mlp 1.66x vs 1.86x.

Each actor asks Ray for one CPU, so Ray is told 1 + C + L logical CPUs: the runners' and the Learners' CPUs are the
same cores, used one phase after the other.
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
    torch_threads: int = 1  # of the driver: its own sampling and/or learning

    @property
    def ray_cpus(self) -> int:
        """Logical CPUs an embedded Ray needs: the driver, every runner, every Learner (one each)."""
        return 1 + self.num_env_runners + self.num_learners

    def describe(self) -> str:
        runners = f"{self.num_env_runners} remote EnvRunners" if self.num_env_runners else "sampling in the driver"
        learners = f"{self.num_learners} remote Learners" if self.num_learners else "the Learner in the driver"
        if not self.num_learners and self.torch_threads > 1:
            learners += f" on {self.torch_threads} torch threads"
        return f"layout for {self.cores} core(s): {runners}, {learners}"


def visible_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: the backbone whose meta-update the driver's torch threads speed up more than remote Learners (docstring)
THREADED_UPDATE_BACKBONES = ("mlp",)


def driver_threads(cores: int, runners: int, learners: int) -> int:
    """The driver's torch threads: all the cores when it only learns (remote runners, no remote Learners), else 1
    (it samples, or only waits)."""
    return cores if runners and not learners else 1


def pick_layout(cores: int, *, meta_batch_size: int, backbone: str = "gru") -> Layout:
    """The layout of the module docstring for ``cores`` cores, a meta-batch of ``meta_batch_size`` tasks and
    ``backbone``."""
    if not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores = {cores!r} must be an integer >= 1")
    if cores == 1:
        return Layout(cores, 0, 0)
    learners = max(d for d in range(1, min(cores, meta_batch_size) + 1) if meta_batch_size % d == 0)
    if learners == 1 or backbone in THREADED_UPDATE_BACKBONES:
        learners = 0
    return Layout(cores, cores, learners, driver_threads(cores, cores, learners))


def resolve(num_env_runners, num_learners, *, cores: int, meta_batch_size: int,
            backbone: str = "gru") -> tuple[int, int, Layout | None]:
    """Replace ``"auto"`` in either count by the picked layout's; returns (runners, learners, layout or None)."""
    if AUTO not in (num_env_runners, num_learners):
        return num_env_runners, num_learners, None
    layout = pick_layout(cores, meta_batch_size=meta_batch_size, backbone=backbone)
    runners = layout.num_env_runners if num_env_runners == AUTO else num_env_runners
    learners = layout.num_learners if num_learners == AUTO else num_learners
    return runners, learners, Layout(cores, runners, learners, driver_threads(cores, runners, learners))
