"""What a trial-memory MAML iteration costs next to an episode-memory one of the same config (issue 14's target).

Run (``--modes episode,trial``: ~10 minutes on a loaded core; the per-task loop adds ~5-20 minutes)::

    .venv/bin/python benchmarks/trial_time.py                                  # HalfCheetahDir, 20 x 20, gru 64
    .venv/bin/python benchmarks/trial_time.py --modes episode,trial --iterations 3

Two Algorithms in this process (``num_env_runners=0``: the local EnvRunner samples, the local Learner updates, one
torch thread), the same config except ``memory``: ``episode`` (the batched meta-gradient of ``metarl.meta_batch``)
and ``trial`` (one trial per sub-env and task job; its Learner alternates between the per-task loop,
``trial loop`` = ``metarl.trial.trial_meta_gradient_loop`` via ``per_task_loop=True``, and the batched
``trial`` = ``metarl.meta_batch.trial_meta_gradient_batched``, the default). Each round runs one iteration of every
mode, in alternating order, so all modes see the same machine state; the first round warms up. Times are CPU
seconds of the main thread (``time.thread_time``, robust to other processes on a shared machine), wall seconds in
brackets; medians over the rounds. "sample" is the iteration minus the Learner's meta-update (sampling, the
runner's inner steps, the driver's bookkeeping). The last column is the iteration relative to episode memory's:
issue 14 asks <= 1.3 for ``trial``. Results to expect (2-core container under load, CPU seconds): episode
~10.6 s per iteration, ``trial`` ~1.1x that, ``trial loop`` ~5x; the tables are in BENCHMARKS.md ("Trial memory:
iteration cost").

Debug in-process: every phase runs in the driver, so ``python -m pdb benchmarks/trial_time.py`` stops anywhere.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import ray
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iteration_time import _timed  # noqa: E402  (a sibling script, not a package)

MODES = ("episode", "trial loop", "trial")


def memory_of(mode: str) -> str:
    return "episode" if mode == "episode" else "trial"


def build(memory: str, args):
    from rllib_ext.algorithm import MAMLConfig

    cfg = (
        MAMLConfig()
        .meta(task=args.task, horizon=args.horizon, backbone=args.backbone, width=args.width,
              meta_batch_size=args.meta_batch_size, episodes_per_task=args.episodes_per_task,
              outer_steps=args.outer_steps, first_order=args.first_order, memory=memory)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.num_envs)
        .debugging(seed=0)
    )
    return cfg.build_algo()


def measure(args) -> dict:
    modes = args.modes.split(",")
    algos = {memory: build(memory, args) for memory in dict.fromkeys(memory_of(m) for m in modes)}
    updates = {k: [] for k in algos}
    gradients = {}
    for memory, algo in algos.items():
        learner = algo.learner_group._learner
        learner.meta_update = _timed(learner.meta_update, updates[memory])
        gradients[memory] = learner.meta_gradient
    rows = {m: [] for m in modes}
    try:
        for i in range(args.iterations + 1):  # the first round warms up
            for mode in modes if i % 2 == 0 else modes[::-1]:
                memory = memory_of(mode)
                learner = algos[memory].learner_group._learner
                learner.meta_gradient = functools.partial(gradients[memory], per_task_loop=mode == "trial loop")
                c0, w0 = time.thread_time(), time.perf_counter()
                algos[memory].train()
                total = (time.thread_time() - c0, time.perf_counter() - w0)
                print(f"round {i} {mode:<11} iteration {total[0]:7.2f} s CPU ({total[1]:7.2f} wall), "
                      f"meta-update {updates[memory][-1][0]:7.2f} ({updates[memory][-1][1]:7.2f}), "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                if i:
                    rows[mode].append((total, updates[memory][-1]))
    finally:
        for algo in algos.values():
            algo.stop()
    out = {}
    for mode, r in rows.items():
        out[mode] = {key: statistics.median(v) for key, v in {
            "total": [t[0] for t, _ in r], "total_wall": [t[1] for t, _ in r],
            "update": [u[0] for _, u in r], "update_wall": [u[1] for _, u in r],
            "sample": [t[0] - u[0] for t, u in r], "sample_wall": [t[1] - u[1] for t, u in r]}.items()}
    return out


def report(res: dict, args) -> None:
    print(
        f"\nTrial vs episode memory: task={args.task} H={args.horizon} tasks={args.meta_batch_size} "
        f"episodes/task={args.episodes_per_task} on {args.num_envs} sub-envs, {args.backbone} width={args.width}, "
        f"{'first' if args.first_order else 'second'} order, outer_steps={args.outer_steps}, "
        f"medians of {args.iterations} iterations\nCPU seconds of one thread (wall seconds in brackets); "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    ref = res.get("episode")
    print(f"{'mode':<12}{'sample s':>18}{'update s':>18}{'iteration s':>20}{'x episode':>11}")
    for mode, r in res.items():
        ratio = f"{r['total'] / ref['total']:>11.2f}" if ref else ""
        print(f"{mode:<12}{r['sample']:>9.2f} ({r['sample_wall']:>6.2f}){r['update']:>9.2f} ({r['update_wall']:>6.2f})"
              f"{r['total']:>11.2f} ({r['total_wall']:>6.2f}){ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    p.add_argument("--task", default="halfcheetah-dir")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--backbone", default="gru")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--meta-batch-size", type=int, default=20)
    p.add_argument("--episodes-per-task", type=int, default=20)
    p.add_argument("--num-envs", type=int, default=10, help="sub-envs (trial memory: episodes-per-task / this per phase)")
    p.add_argument("--outer-steps", type=int, default=5)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--iterations", type=int, default=2, help="measured iterations per mode, after one warm-up each")
    args = p.parse_args()
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes {args.modes!r}: {bad} not in {list(MODES)}")
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = measure(args)
    finally:
        ray.shutdown()
    report(res, args)


if __name__ == "__main__":
    main()
