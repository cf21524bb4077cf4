"""Start or join Ray for the commands (``metarl train``/``run_mujoco.py`` and ``metarl sweep``)."""

from __future__ import annotations

import os


def start_or_join_ray(num_cpus: int | None) -> bool:
    """Use a running Ray as is; join the cluster of ``RAY_ADDRESS`` bare (inside ``ray job submit``, where passing
    resources raises); else start an embedded Ray with ``num_cpus``. True when this call started it (and must shut
    it down). Shared by ``metarl train`` / ``run_mujoco.py`` and ``metarl sweep``."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        # address="local": an embedded Ray, even when a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    return True


def init_ray_for_run(args) -> bool:
    """``start_or_join_ray`` with at least one CPU for the driver and each EnvRunner and Learner."""
    need = 1 + args.num_env_runners + args.num_learners
    return start_or_join_ray(max(args.num_cpus or os.cpu_count() or 1, need))

