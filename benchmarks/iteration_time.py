"""Where a MAML meta-iteration spends its time, per backbone: sampling / inner adaptation / meta-update.

Run (about 2-4 minutes on 2 cores)::

    .venv/bin/python benchmarks/iteration_time.py                       # all registered backbones
    .venv/bin/python benchmarks/iteration_time.py --backbones gru,lru --iterations 3

Everything runs in this process (``num_env_runners=0``: the local EnvRunner samples, the local Learner updates) on
one torch thread, so the split is the cost of each phase on one core. Printed as seconds per iteration and as the
share of the iteration; the last column is each backbone's iteration time relative to ``gru`` measured in the same
run (absolute times drift on a shared machine; ratios hold). Results to expect (2-core VM, HalfCheetahDir H=100,
4 tasks x 10 episodes, width 64): see BENCHMARKS.md.

Debug in-process: every phase runs in the driver, so ``python -m pdb benchmarks/iteration_time.py`` stops anywhere.
"""

from __future__ import annotations

import argparse
import statistics

import ray
import torch

from metarl import models


def measure(backbone: str, args) -> dict:
    from rllib_ext.algorithm import MAMLConfig

    cfg = (
        MAMLConfig()
        .meta(
            task=args.task,
            horizon=args.horizon,
            backbone=backbone,
            width=args.width,
            meta_batch_size=args.meta_batch_size,
            episodes_per_task=args.episodes_per_task,
            outer_steps=args.outer_steps,
        )
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.episodes_per_task)
        .debugging(seed=0)
    )
    algo = cfg.build_algo()
    try:
        num_params = models.num_params(algo.learner_group._learner.policy)
        algo.train()  # warm-up
        rows = []
        for _ in range(args.iterations):
            t = algo.train()["time"]
            rows.append((t["runner_sampling_s"], t["runner_adapting_s"], t["meta_update_s"], t["sample_and_adapt_s"]))
    finally:
        algo.stop()
    sample, adapt, update, sample_total = (statistics.median(c) for c in zip(*rows))
    total = sample_total + update
    return dict(backbone=backbone, params=num_params, sample=sample, adapt=adapt, update=update, total=total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=",".join(models.available()))
    p.add_argument("--task", default="halfcheetah-dir")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--meta-batch-size", type=int, default=4)
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--outer-steps", type=int, default=5)
    p.add_argument("--iterations", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = [measure(b, args) for b in args.backbones.split(",")]
    finally:
        ray.shutdown()
    ref = next((r for r in res if r["backbone"] == "gru"), res[0])
    print(
        f"\nMAML iteration split: task={args.task} H={args.horizon} tasks={args.meta_batch_size} "
        f"episodes/task={args.episodes_per_task} (x2: support+query) width={args.width} outer_steps={args.outer_steps}"
    )
    print(f"{'backbone':<12}{'params':>8}{'sample s':>10}{'adapt s':>9}{'update s':>10}{'total s':>9}"
          f"{'sample%':>9}{'adapt%':>8}{'update%':>9}{'x gru':>7}")
    for r in res:
        t = r["total"]
        print(
            f"{r['backbone']:<12}{r['params']:>8}{r['sample']:>10.2f}{r['adapt']:>9.2f}{r['update']:>10.2f}{t:>9.2f}"
            f"{100 * r['sample'] / t:>8.0f}%{100 * r['adapt'] / t:>7.0f}%{100 * r['update'] / t:>8.0f}%"
            f"{t / ref['total']:>7.2f}"
        )


if __name__ == "__main__":
    main()
