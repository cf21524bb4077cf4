"""Peak memory (RSS) of one MAML meta-update with recurrent backbones at Meta-World's horizon (T = 500).

How to run::

    .venv/bin/python benchmarks/bptt_memory.py                       # gru, lru; T 100/500; 10 and 20 episodes
    .venv/bin/python benchmarks/bptt_memory.py --T 500 --episodes 10 --tasks 20 --path loop

What it measures: in a fresh subprocess per configuration, the Learner's meta-gradient (``metarl.rl.prepare_task``
then ``--path batched``: ``metarl.meta_batch.meta_gradient_batched``, what ``MAMLLearner`` runs by default, or
``--path loop``: ``metarl.rl.meta_gradient_loop``, its ``per_task_loop=True`` reference; second order, one inner
step) for
``--tasks`` tasks of ``--episodes`` support + ``--episodes`` query episodes of length T, through a ``PolicyNet``
(Meta-World's spaces: 39-d observations, 4-d actions, width 64), one torch thread, float32. Reported: the resident
set just before the meta-update, the process's peak (``ru_maxrss``) and their difference (what backpropagation
through the episodes costs), and CPU seconds. Episode contents are random (memory does not depend on them).
The loop backpropagates one task at a time, so its peak is set by ONE task's graph and does not grow with the
number of tasks; it grows linearly in T x episodes. The batched path (all tasks of a Learner's shard at once)
holds every task's graph: its peak grows with the tasks too (shard the meta-batch over Learners to bound it).

What to expect (2-core AMD EPYC VM, torch 2.13 CPU; BENCHMARKS.md): at T = 500 and 10 + 10 episodes per task the
loop adds ~0.1-0.2 GB over the resident set for gru and lru, about the same for 2 or 20 tasks (T = 100: ~30 MB);
the batched path ~85 MB per task, 1.7 GB for 20 tasks. Debug in-process: ``python benchmarks/bptt_memory.py --child gru 500 10 2 loop``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import torch

OBS, ACT, WIDTH = 39, 4, 64


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def random_batch(rng: np.random.Generator, episodes: int, horizon: int):
    from metarl.rl import EpisodeBatch

    return EpisodeBatch(obs=rng.normal(size=(episodes, horizon, OBS)).astype(np.float32),
                        actions=rng.normal(size=(episodes, horizon, ACT)).astype(np.float32),
                        rewards=rng.normal(size=(episodes, horizon)).astype(np.float32),
                        mask=np.ones((episodes, horizon), np.float32),
                        logp=np.zeros((episodes, horizon), np.float32))


def child(backbone: str, horizon: int, episodes: int, tasks: int, path: str = "loop") -> dict:
    """One meta-update in this process (``path``: the per-task loop or the batched twin); its memory and time."""
    from metarl.meta_batch import meta_gradient_batched
    from metarl.policy_net import PolicyNet, functional_log_prob
    from metarl.rl import meta_gradient_loop, prepare_task

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = PolicyNet.for_spaces(gym.spaces.Box(-np.inf, np.inf, (OBS,)), gym.spaces.Box(-1.0, 1.0, (ACT,)),
                               backbone=backbone, width=WIDTH)
    rng = np.random.default_rng(0)
    prepared = [prepare_task([random_batch(rng, episodes, horizon)], random_batch(rng, episodes, horizon),
                             dtype=torch.float32, device="cpu", gamma=0.99) for _ in range(tasks)]
    before = rss_mb()
    start = time.process_time()
    meta_gradient = meta_gradient_loop if path == "loop" else meta_gradient_batched
    meta_gradient(lambda p, o, a: functional_log_prob(net, p, o, a)[0], dict(net.named_parameters()),
                       prepared, num_tasks_total=tasks, inner_lr=0.1, gamma=0.99, clip=0.3)
    seconds = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backbone": backbone, "path": path, "T": horizon, "episodes": episodes, "tasks": tasks, "rss_before_mb": before,
            "peak_mb": peak, "growth_mb": peak - before, "cpu_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["gru", "lru"])
    parser.add_argument("--T", nargs="+", type=int, default=[100, 500])
    parser.add_argument("--episodes", nargs="+", type=int, default=[10, 20], help="support (= query) episodes")
    parser.add_argument("--tasks", type=int, default=2, help="tasks in the meta-update (the peak is per task)")
    parser.add_argument("--path", choices=["loop", "batched"], default="batched",
                        help="meta-gradient: metarl.meta_batch, all tasks at once (MAMLLearner's default), or the "
                             "per-task reference loop")
    parser.add_argument("--child", nargs=5, metavar=("BACKBONE", "T", "EPISODES", "TASKS", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, horizon, episodes, tasks, path = args.child
        print(json.dumps(child(name, int(horizon), int(episodes), int(tasks), path)))
        return
    print(f"torch {torch.__version__}, width {WIDTH}, obs {OBS}, act {ACT}, {args.tasks} tasks, {args.path} "
          "meta-gradient, second order, 1 thread")
    print(f"{'backbone':8s} {'T':>5s} {'episodes':>9s} {'RSS before MB':>14s} {'peak MB':>8s} {'growth MB':>10s} "
          f"{'CPU s':>7s}")
    for name in args.backbones:
        for horizon in args.T:
            for episodes in args.episodes:
                out = subprocess.run([sys.executable, __file__, "--child", name, str(horizon), str(episodes),
                                      str(args.tasks), args.path], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{name:8s} {horizon:5d} {episodes:5d}+{episodes:<3d} {r['rss_before_mb']:14.0f} "
                      f"{r['peak_mb']:8.0f} {r['growth_mb']:10.0f} {r['cpu_s']:7.1f}")


if __name__ == "__main__":
    main()
