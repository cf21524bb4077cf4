"""First- vs second-order meta-gradient at saved checkpoints: how well they agree, and how far a step may go.

Run (about a minute per checkpoint on one core)::

    .venv/bin/python benchmarks/meta_grad_alignment.py runs/hcdir-long/default/seed0/checkpoints/checkpoint_000375
    .venv/bin/python benchmarks/meta_grad_alignment.py RUN/checkpoints/checkpoint_000075 RUN/checkpoints/checkpoint_000525

Per checkpoint (an episode-memory run): one meta-batch is sampled with the checkpoint's θ and config (the local
EnvRunner, ``--seed`` picks the tasks and episodes); on it the meta-gradient of the clipped surrogate is computed
second order (exact) and first order (``metarl.meta_batch.meta_gradient_batched``). Printed: both norms, their
cosine, the norm of the next Adam step (lr · m̂ / (√v̂ + ε) from the checkpoint's optimizer state), and the change
of the surrogate (measured exactly at θ'(θ)) after a step of each norm in ``--norms`` along each normalised
negative gradient. A step whose change is positive made the objective worse: the norms where that starts are the
size of the region where the outer steps can be trusted (BENCHMARKS.md, "HalfCheetahDir to 30 M").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from metarl.meta_batch import meta_gradient_batched  # noqa: E402
from metarl.policy_net import functional_log_prob  # noqa: E402
from rllib_ext.checkpoint import load_config  # noqa: E402
from rllib_ext.jobs import TaskJob  # noqa: E402
from rllib_ext.rllib_internals import local_learner  # noqa: E402


def sample_meta_batch(algo, cfg, seed: int):
    """One meta-batch of task results, sampled with the checkpoint's θ."""
    rng = np.random.default_rng(seed)
    task_list = algo._task_env.sample_tasks(cfg.meta_batch_size, seed=int(rng.integers(2**31)))
    jobs = [TaskJob(task=t, task_index=i, iteration=0, seed=int(rng.integers(2**31)), inner_steps=cfg.inner_steps,
                    episodes_per_task=cfg.episodes_per_task) for i, t in enumerate(task_list)]
    return algo.run_jobs(jobs)


def adam_step_norm(optim, params: list[torch.Tensor]) -> float:
    """‖lr · m̂ / (√v̂ + ε)‖ of the next Adam step (0 before the first)."""
    group = optim.param_groups[0]
    total = 0.0
    for p in params:
        state = optim.state.get(p)
        if not state:
            return 0.0
        step = float(state["step"])
        m = state["exp_avg"] / (1 - group["betas"][0] ** step)
        v = state["exp_avg_sq"] / (1 - group["betas"][1] ** step)
        total += float(((group["lr"] * m / (v.sqrt() + group["eps"])) ** 2).sum())
    return total**0.5


def analyse(ckpt: Path, *, seed: int, norms: list[float]) -> None:
    cfg = load_config(ckpt).copy(copy_frozen=False)
    cfg.env_runners(num_env_runners=0).learners(num_learners=0)
    algo = cfg.build_algo()
    try:
        algo.restore_from_path(str(ckpt.resolve()))
        learner = local_learner(algo.learner_group)
        tasks = learner.prepare(sample_meta_batch(algo, cfg, seed))
        net = learner.policy.net
        names, params = zip(*net.named_parameters())
        theta = [p.detach().clone() for p in params]

        def loss_and_grad(first_order: bool) -> tuple[float, torch.Tensor]:
            for p in params:
                p.grad = None
            loss, _ = meta_gradient_batched(lambda q, o, a: functional_log_prob(net, q, o, a)[0],
                                            dict(zip(names, params)), tasks, num_tasks_total=len(tasks),
                                            inner_lr=cfg.inner_lr, gamma=cfg.gamma, clip=cfg.clip_param,
                                            first_order=first_order, objective=cfg.inner_objective)
            return loss, torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten()
                                    for p in params])

        def move(vec: torch.Tensor) -> None:
            with torch.no_grad():
                i = 0
                for p, t in zip(params, theta):
                    p.copy_(t + vec[i:i + p.numel()].view_as(p))
                    i += p.numel()

        loss0, g2 = loss_and_grad(False)
        _, g1 = loss_and_grad(True)
        cos = float(g1 @ g2 / (g1.norm() * g2.norm()))
        step = adam_step_norm(learner.get_optimizer(), list(params))
        print(f"{ckpt}: |g second| {g2.norm():.4f}  |g first| {g1.norm():.4f}  cosine {cos:+.3f}  "
              f"next Adam step norm {step:.4f}")
        for label, g in (("second order", g2), ("first order", g1)):
            changes = []
            for eta in norms:
                move(-eta * g / g.norm())
                changes.append(f"{eta:g}: {loss_and_grad(False)[0] - loss0:+.5f}")
            move(torch.zeros_like(g))
            print(f"  {label:12s} surrogate change after a step of norm " + "  ".join(changes))
    finally:
        algo.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled meta-batch")
    p.add_argument("--norms", default="0.001,0.01,0.03,0.1,0.3", help="comma-separated step norms")
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for ckpt in args.checkpoints:
            analyse(ckpt, seed=args.seed, norms=[float(x) for x in args.norms.split(",")])
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
