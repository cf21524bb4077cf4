"""``metarl evaluate``: adapt a trained policy on the held-out test tasks and report the return after each step.

For each test task (``env.unwrapped.test_tasks(num_tasks, seed=test_seed)``, fixed across runs), with the
stochastic policy::

    support_0 ~ π(θ)  (K episodes);  θ_1 = θ - α ∇ L_inner(θ; support_0);  support_1 ~ π(θ_1);  ...  up to θ_N

which is exactly the EnvRunner's ``run_task`` (built here in-process: no Ray cluster) on a ``TaskJob`` with
``inner_steps = N`` and ``episodes_per_task = K``. Reported per step k = 0..N: the mean return over tasks x
episodes, its standard error over tasks, the spread (std) over tasks and over episodes, and the env steps spent
up to and including step k (k = 0: before any adaptation); for families that report success (Meta-World), the
success rate (episodes with ``info["success"]`` true at some step) and its standard error over tasks. Meta-World's
protocol per held-out goal (adaptation episodes, one step, evaluation episodes) is ``--adapt-steps 1 --episodes 10``:
row k = 0 is the 10 adaptation episodes, row k = 1 the evaluation episodes (10 here; Meta-World draws 3, same
expected success). With a trial-memory checkpoint (``memory="trial"``) each task's steps run as one trial per
sub-env (the state carried across episodes and steps, as in training), and each step also reports the return of
episode j = 1..Q within its phase (``return_per_episode``, Q = episodes / sub-envs; a table block "in context"):
in-context adaptation shows as a rise from episode 1 to episode Q. Example::

    metarl evaluate --checkpoint runs/hc --adapt-steps 3 --episodes 20 --out eval.json
    metarl evaluate --checkpoint runs/ml1 --adapt-steps 1 --episodes 10 --num-tasks 50   # Meta-World ML1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from metarl.apps.provenance import json_safe, provenance

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="run folder (uses checkpoints/latest) or checkpoint folder")
    parser.add_argument("--adapt-steps", type=int, default=3, help="inner steps N (returns reported for k = 0..N)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes K per task per step")
    parser.add_argument("--num-tasks", type=int, default=40, help="held-out test tasks (MAML paper: 40)")
    parser.add_argument("--num-envs", type=int, default=None, help="sub-envs (a divisor of --episodes; default <= 10; trial memory: one trial per "
                        "sub-env, default <= the checkpoint's sub-envs per runner)")
    parser.add_argument("--inner-lr", type=float, default=None, help="α of the inner step, >= 0; 0: θ unchanged, adaptation in context only (RL²) "
                             "(default: the run's eval_inner_lr, else its inner_lr)")
    parser.add_argument("--test-seed", type=int, default=1, help="seed of the test-task set (MAML paper: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes")
    parser.add_argument("--out", default=None, help="write the results to this JSON file")
    return parser


def _largest_divisor(k: int, *, at_most: int) -> int:
    return max(d for d in range(1, min(k, at_most) + 1) if k % d == 0)


def evaluate(checkpoint, *, adapt_steps: int, episodes: int, num_tasks: int = 40, num_envs: int | None = None,
             inner_lr: float | None = None, test_seed: int = 1, seed: int = 0) -> dict:
    """Adapt on each test task; returns {"steps": [per-k summary], "per_task": [...], "provenance": ...}."""
    from rllib_ext.checkpoint import load_config, resolve_checkpoint
    from rllib_ext.heldout import run_heldout, trial_envs_of
    from rllib_ext.runner import MAMLEnvRunner

    for name, v, lo in (("adapt_steps", adapt_steps, 0), ("episodes", episodes, 1), ("num_tasks", num_tasks, 1)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"evaluate(): {name} = {v!r} must be an integer >= {lo}")
    if num_envs is not None and (not isinstance(num_envs, int) or num_envs < 1 or episodes % num_envs):
        raise ValueError(f"evaluate(): num_envs = {num_envs} must divide episodes = {episodes}")
    ckpt = resolve_checkpoint(checkpoint)
    cfg = load_config(ckpt).copy(copy_frozen=False)
    # trial memory: one trial per sub-env, so the sub-envs set the episodes per trial; default: as in training
    num_envs = num_envs or _largest_divisor(
        episodes, at_most=cfg.num_envs_per_env_runner if cfg.memory == "trial" else 10)
    cfg.meta(inner_steps=adapt_steps, episodes_per_task=episodes)  # what runs (the jobs carry it), as recorded
    lr = eval_lr(cfg, inner_lr)
    cfg.env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)

    runner = MAMLEnvRunner(config=cfg)
    try:
        _load_policy_weights(runner.module, cfg, ckpt)
        # the same function as the evaluation inside a trial (MAML.evaluate_heldout): same tasks, seeds, jobs
        per_task = run_heldout(runner.run_tasks, task=cfg.task, task_options=cfg.task_options, num_tasks=num_tasks,
                               test_seed=test_seed, inner_steps=adapt_steps, episodes=episodes, seed=seed,
                               trial_envs=trial_envs_of(cfg), inner_lr=lr)
    finally:
        runner.stop()
    check_finite_returns(per_task, inner_lr=lr)
    rets = np.array([t["returns"] for t in per_task])  # (tasks, N+1, K)
    steps = np.array([t["env_steps"] for t in per_task]).sum(0)  # (N+1,)
    task_means = rets.mean(2)  # (tasks, N+1)
    summary = []
    for k in range(adapt_steps + 1):
        summary.append({
            "k": k,
            "return_mean": float(task_means[:, k].mean()),
            "return_sem_tasks": float(task_means[:, k].std(ddof=1) / np.sqrt(num_tasks)) if num_tasks > 1 else 0.0,
            "return_std_tasks": float(task_means[:, k].std()),
            "return_std_episodes": float(rets[:, k].std()),
            "env_steps": int(steps[k]),
            "env_steps_cumulative": int(steps[: k + 1].sum()),
            **success_summary(per_task, k),
            **in_context_summary(per_task, k),
        })
    trial = {"memory": "trial", "num_envs": num_envs} if cfg.memory == "trial" else {}  # episode memory: as before
    return {
        **trial,
        "checkpoint": str(ckpt),
        "task": cfg.task,
        "adapt_steps": adapt_steps,
        "episodes": episodes,
        "num_tasks": num_tasks,
        "inner_lr": lr,
        "steps": summary,
        "per_task": per_task,
        "provenance": provenance(config=cfg, seeds={"seed": seed, "test_seed": test_seed},
                                 extra={"checkpoint": str(ckpt)}),
    }


def success_summary(per_task: list[dict], k: int) -> dict:
    """Success rate with θ_k over tasks x episodes and its standard error over tasks ({} without success)."""
    if not per_task or per_task[0]["success"] is None:
        return {}
    rates = np.array([np.mean(t["success"][k]) for t in per_task])  # (tasks,)
    sem = float(rates.std(ddof=1) / np.sqrt(len(rates))) if len(rates) > 1 else 0.0
    return {"success_rate": float(rates.mean()), "success_sem_tasks": sem}


def in_context_summary(per_task: list[dict], k: int) -> dict:
    """Trial memory: with θ_k, the return of the j-th episode within the phase (j = 1..Q; ``phase_returns``), mean
    over tasks and its standard error over tasks ({} with episode memory)."""
    if not per_task or "phase_returns" not in per_task[0]:
        return {}
    curve = np.array([t["phase_returns"][k] for t in per_task])  # (tasks, Q)
    sem = curve.std(0, ddof=1) / np.sqrt(len(curve)) if len(curve) > 1 else np.zeros(curve.shape[1])
    return {"return_per_episode": curve.mean(0).tolist(), "return_per_episode_sem_tasks": sem.tolist()}


def format_in_context(result: dict) -> list[str]:
    """Trial memory's block of ``format_table``: per step k, the mean return of episode 1..Q within the phase."""
    steps = [s for s in result["steps"] if "return_per_episode" in s]
    if not steps:
        return []
    q = len(steps[0]["return_per_episode"])
    lines = [f"in context (trial memory, {result.get('num_envs', '?')} sub-env trial(s) per task): return of episode "
             f"j within each step's phase, mean over tasks",
             f"{'step k':>6}  " + "  ".join(f"{f'ep {j}':>8}" for j in range(1, q + 1)) + f"  {'last-first':>10}"]
    for s in steps:
        curve = s["return_per_episode"]
        lines.append(f"{s['k']:>6d}  " + "  ".join(f"{v:>8.2f}" for v in curve) + f"  {curve[-1] - curve[0]:>+10.2f}")
    return lines


def format_table(result: dict) -> str:
    lines = [
        f"{result['task']}: {result['num_tasks']} test tasks x {result['episodes']} episodes, "
        f"inner lr {result['inner_lr']}, checkpoint {result['checkpoint']}",
        f"{'step k':>6}  {'return':>10}  {'± sem':>8}  {'std tasks':>9}  {'std eps':>8}  {'env steps':>10}  {'cum.':>10}"
        + ("  success ± sem" if result["steps"] and "success_rate" in result["steps"][0] else ""),
    ]
    for s in result["steps"]:
        lines.append(
            f"{s['k']:>6d}  {s['return_mean']:>10.2f}  {s['return_sem_tasks']:>8.2f}  {s['return_std_tasks']:>9.2f}"
            f"  {s['return_std_episodes']:>8.2f}  {s['env_steps']:>10,d}  {s['env_steps_cumulative']:>10,d}"
            + (f"  {s['success_rate']:>7.1%} ± {s['success_sem_tasks']:.1%}" if "success_rate" in s else "")
        )
    return "\n".join(lines + format_in_context(result))


def _load_policy_weights(module, cfg, ckpt) -> None:
    """The checkpoint's policy weights into ``module``: structure checked first (task/model mismatch in words),
    an unreadable file named, non-finite weights refused (naming the parameter)."""
    from rllib_ext.checkpoint import POLICY_SUBDIR, check_finite_parameters, check_policy_fits, diagnose_unreadable

    check_policy_fits(module, cfg, ckpt)
    try:
        module.restore_from_path(str((ckpt / POLICY_SUBDIR).resolve()))
    except Exception as e:
        named = diagnose_unreadable(ckpt / POLICY_SUBDIR, e)
        if named is None:
            raise
        raise named from e
    check_finite_parameters(module, ckpt)


def eval_lr(cfg, inner_lr: float | None) -> float:
    """The α of the evaluation's inner steps: ``inner_lr`` if given (a finite number >= 0; 0: θ unchanged, the
    query phase continues the trial in context), else the run's ``eval_inner_lr``, else its ``inner_lr``."""
    if inner_lr is None:
        return cfg.inner_lr if cfg.eval_inner_lr is None else cfg.eval_inner_lr
    check_inner_lr(inner_lr, name="evaluate(): inner_lr")
    return float(inner_lr)


def check_inner_lr(inner_lr, *, name: str) -> None:
    """``inner_lr`` (called ``name`` in the message) must be None or a finite number >= 0."""
    if inner_lr is not None and (isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float))
                                 or not 0 <= inner_lr < float("inf")):
        raise ValueError(f"{name} = {inner_lr!r} must be a finite number >= 0 (0: θ unchanged, adaptation in "
                         "context only), or None (the run's)")


def check_finite_returns(per_task: list[dict], *, inner_lr: float) -> None:
    """FloatingPointError naming the first step k (and task) whose episode returns are not finite."""
    for i, t in enumerate(per_task):
        for k, rets in enumerate(t["returns"]):
            if not np.isfinite(rets).all():
                cause = (f"after {k} inner step(s) with inner_lr = {inner_lr}: the adapted parameters diverged"
                         if k else "with the checkpoint's parameters θ (step 0)")
                raise FloatingPointError(f"evaluate: step k={k}, test task {i}: episode returns are not finite "
                                         f"({rets[:3]}...) {cause}; nothing was written")


def check_out_path(out: str | None) -> None:
    """``--out`` must name a file in an existing, writable folder (checked before evaluating)."""
    if not out:
        return
    import os
    from pathlib import Path

    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder; give a JSON file name, e.g. {path / 'eval.json'}")
    if not path.parent.is_dir():
        raise ValueError(f"--out {out}: folder {path.parent} does not exist (create it first)")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--out {out} is not writable")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)  # small per-step matrices: one thread, as `metarl train --torch-threads` defaults to
    try:
        check_out_path(args.out)
        check_inner_lr(args.inner_lr, name="--inner-lr")  # before the checkpoint is read
        result = evaluate(args.checkpoint, adapt_steps=args.adapt_steps, episodes=args.episodes,
                          num_tasks=args.num_tasks, num_envs=args.num_envs, inner_lr=args.inner_lr,
                          test_seed=args.test_seed, seed=args.seed)
    except ValueError as e:
        if getattr(args, "debug", False):
            raise
        print(f"metarl evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(json_safe(result), f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(add_arguments(argparse.ArgumentParser(prog="metarl evaluate")).parse_args()))
