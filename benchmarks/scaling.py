"""Iteration time and cores in use per phase, for every actor layout on 1 and 2 cores, side by side in one run.

Run (about 10-15 minutes on an idle 2-core machine)::

    .venv/bin/python benchmarks/scaling.py                                  # mlp and gru, all layouts
    .venv/bin/python benchmarks/scaling.py --backbones gru --iterations 2   # quicker
    .venv/bin/python benchmarks/scaling.py --auto-only --rounds 3           # 1 core vs ``auto``, alternating
    .venv/bin/python benchmarks/scaling.py --auto-only --first-order        # metarl train's MuJoCo default

Each layout runs in a fresh process (its own embedded Ray) pinned to its cores with ``os.sched_setaffinity``
(inherited by every Ray worker it starts): ``1 core`` = everything in the driver; on 2 cores every layout
``metarl.apps.layout`` can pick (runners x Learners). Per layout it prints the median iteration time, env steps
per second, and for each phase (sampling + inner steps on the runners; the meta-update) the cores in use = CPU
time of the whole process tree (driver, raylet, every worker; from /proc) / wall time of the phase. Ratios are
to the 1-core layout of the same backbone, measured in the same run (with ``--rounds N`` every layout runs N
times, in alternation, and the table shows medians; the speedup is the median of each round's ratio).
``(auto)`` marks the layout that ``--num-env-runners auto --num-learners auto`` picks on 2 cores (``make run``'s).
"push s": the new weights to the runners, confirmed. "in a runner: busy": a runner's own seconds of sampling and
inner steps (the tasks' ``time_sample_s`` + ``time_adapt_s``, summed, / runners); the rest of "sample s" is the
jobs' dispatch, the results' transfer to the driver and the wait for the slower runner.
"in a Learner": the Learners' own split of the meta-update (``meta/time_*_s``, mean over Learners): episode tensors
and advantages, the meta-gradients, the collectives (waits included), and "whole": the Learner's whole update
(those, Adam, clipping). "calls s" = the driver's update window - "whole", per iteration: the calls to the
Learners (the shards' way in, the metrics' way back, the wait for the slowest Learner).

Defaults: HalfCheetahDir H=100, 20 tasks x 10 episodes on 10 sub-envs per runner, width 64, second order. Results: BENCHMARKS.md.
Debug in-process: ``python benchmarks/scaling.py --child '{"backbone": "mlp", "cores": [0], "runners": 0,
"learners": 0, "iterations": 1, ...}'`` runs one layout in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and all its live descendants (/proc), in seconds."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


class PhaseMeter:
    """Wall and process-tree CPU seconds of each call of the wrapped methods."""

    def __init__(self):
        self.rows: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            c0, t0 = tree_cpu_seconds(os.getpid()), time.perf_counter()
            out = fn(*a, **kw)
            self.rows.setdefault(name, []).append((time.perf_counter() - t0, tree_cpu_seconds(os.getpid()) - c0))
            return out

        return timed


#: the Learners' own split of the meta-update (``meta/time_<part>_s``, mean over Learners)
LEARNER_PARTS = ("prepare", "gradient", "allreduce", "learner")  # "learner": its whole update


def child(spec: dict) -> dict:
    """One layout in this process: build, warm up, time ``iterations`` meta-iterations."""
    os.sched_setaffinity(0, set(spec["cores"]))
    import ray
    import torch

    from rllib_ext.config import MAMLConfig

    torch.set_num_threads(len(spec["cores"]))
    ray.init(address="local", num_cpus=1 + spec["runners"] + spec["learners"], include_dashboard=False,
             log_to_driver=False)
    cfg = (MAMLConfig()
           .meta(task=spec["task"], horizon=spec["horizon"], backbone=spec["backbone"], width=spec["width"],
                 meta_batch_size=spec["meta_batch_size"], episodes_per_task=spec["episodes_per_task"],
                 first_order=spec["first_order"])
           .env_runners(num_env_runners=spec["runners"], num_envs_per_env_runner=spec["num_envs"])
           .learners(num_learners=spec["learners"])
           .debugging(seed=0))
    algo = cfg.build_algo()
    meter = PhaseMeter()
    algo.run_jobs = meter.wrap("sample", algo.run_jobs)
    algo.meta_update = meter.wrap("update", algo.meta_update)
    algo.push_weights = meter.wrap("push", algo.push_weights)
    try:
        algo.train()  # warm-up (actor start, first compile of every path)
        meter.rows.clear()
        walls, steps, parts, busy = [], [], [], []
        for _ in range(spec["iterations"]):
            t0 = time.perf_counter()
            result = algo.train()
            walls.append(time.perf_counter() - t0)
            steps.append(result["env_steps"]["this_iter"])
            parts.append({k: result["meta"][f"time_{k}_s"] for k in LEARNER_PARTS})
            busy.append((result["time"]["runner_sampling_s"] + result["time"]["runner_adapting_s"])
                        / max(spec["runners"], 1))
    finally:
        algo.stop()
        ray.shutdown()
    out = {"iteration_s": statistics.median(walls), "steps_per_s": statistics.median(s / w for s, w in zip(steps, walls))}
    out.update({f"learner_{k}_s": statistics.median(p[k] for p in parts) for k in LEARNER_PARTS})
    out["runner_busy_s"] = statistics.median(busy)
    # per iteration: the driver's update window minus the Learners' whole update (a difference of two medians or
    # of a mean and a median could read below zero when the calls cost almost nothing)
    out["calls_s"] = statistics.median(u[0] - p["learner"] for u, p in zip(meter.rows["update"], parts))
    for phase, rows in meter.rows.items():
        wall, cpu = sum(r[0] for r in rows), sum(r[1] for r in rows)
        out[f"{phase}_s"] = wall / len(rows)
        out[f"{phase}_cores"] = cpu / wall
    return out


def layouts(meta_batch_size: int, auto_only: bool) -> list[tuple[str, list[int], int, int]]:
    """(name, cores, runners, learners): 1 core, then every 2-core layout (runners in {0, 2}, Learners in {0, 2}),
    or only the one ``auto`` picks. The child runs the driver on as many torch threads as it has cores."""
    from metarl.apps.layout import pick_layout

    auto = pick_layout(2, meta_batch_size=meta_batch_size)
    rows = [("1 core", [0], 0, 0)]
    for runners in (0, 2):
        for learners in (0, 2):
            picked = (runners, learners) == (auto.num_env_runners, auto.num_learners)
            if (runners, learners) != (0, 0) and meta_batch_size % max(learners, 1) == 0 and (picked or not auto_only):
                name = f"2 cores: {runners} runners, {learners} learners" + (" (auto)" if picked else "")
                rows.append((name, [0, 1], runners, learners))
    if not auto_only:
        rows.append(("2 cores: all in the driver, 2 threads", [0, 1], 0, 0))
    return rows


def run_layout(base: dict, name: str, cores: list[int], runners: int, learners: int) -> dict:
    spec = {**base, "cores": cores, "runners": runners, "learners": learners}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"layout {name!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="mlp,gru")
    p.add_argument("--task", default="halfcheetah-dir")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--meta-batch-size", type=int, default=20)
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--auto-only", action="store_true", help="only 1 core and the layout 'auto' picks on 2 cores")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of every layout, alternating; the table shows medians (speedup: of each round's ratio)")
    p.add_argument("--first-order", action="store_true",
                   help="first-order meta-gradient (metarl train's MuJoCo default for the first 9 M env steps); default: "
                        "second order")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("scaling.py needs 2 cores (this process may run on fewer)")
    base = dict(task=args.task, horizon=args.horizon, meta_batch_size=args.meta_batch_size,
                episodes_per_task=args.episodes_per_task, num_envs=args.num_envs, width=args.width,
                iterations=args.iterations, first_order=args.first_order)
    print(f"{args.task} H={args.horizon}, {args.meta_batch_size} tasks x {args.episodes_per_task} episodes, "
          f"{args.num_envs} sub-envs per runner, width {args.width}, {'first' if args.first_order else 'second'} "
          f"order, median of {args.iterations} iterations")
    print(f"{'backbone':8s} {'layout':40s} {'iter s':>7s} {'speedup':>7s} {'steps/s':>8s} {'sample s':>8s} "
          f"{'cores':>5s} {'update s':>8s} {'cores':>5s} {'push s':>6s} | in a runner: {'busy':>5s} | in a Learner: "
          f"{'prepare':>7s} {'gradient':>8s} {'allreduce':>9s} {'whole':>5s} | calls s")
    for backbone in args.backbones.split(","):
        rows = layouts(args.meta_batch_size, args.auto_only)
        runs: dict[str, list[dict]] = {name: [] for name, *_ in rows}
        for round_ in range(args.rounds):  # layouts alternate, so that the machine's drift hits them all alike
            for name, cores, runners, learners in rows:
                r = run_layout({**base, "backbone": backbone}, name, cores, runners, learners)
                runs[name].append(r)
                r["speedup"] = runs[rows[0][0]][round_]["iteration_s"] / r["iteration_s"]  # rows[0]: 1 core
                if args.rounds > 1:
                    print(f"  round {round_ + 1}: {backbone} {name}: {r['iteration_s']:.2f} s, {r['speedup']:.2f}x",
                          flush=True)
        for name, *_ in rows:
            m = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
            print(f"{backbone:8s} {name:40s} {m['iteration_s']:7.2f} {m['speedup']:6.2f}x {m['steps_per_s']:8.0f} "
                  f"{m['sample_s']:8.2f} {m['sample_cores']:5.2f} {m['update_s']:8.2f} {m['update_cores']:5.2f} "
                  f"{m['push_s']:6.2f} |{'':13s} {m['runner_busy_s']:5.2f} |{'':14s} {m['learner_prepare_s']:7.2f} "
                  f"{m['learner_gradient_s']:8.2f} "
                  f"{m['learner_allreduce_s']:9.2f} {m['learner_learner_s']:5.2f} | "
                  f"{m['calls_s']:7.2f}", flush=True)

if __name__ == "__main__":
    main()
