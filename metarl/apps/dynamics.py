"""`metarl dynamics`: meta-learn a next-observation model across tasks with varied physics, adapt on held-out tasks.

How to run::

    metarl dynamics --env pendulum-mass --num-epochs 50 --adapt-steps 5 --seed 0 --out dynamics.json

What it does: for each training task (``env.unwrapped.sample_tasks``; pendulum-mass varies the pole's mass) it
collects ``--trajectories-per-task`` random-action trajectories of ``--trajectory-length`` steps. A backbone
(``--backbone``, default mlp) maps (obs_t, a_t) to Δobs_t = obs_{t+1} - obs_t (inputs and targets standardised
with training statistics). MetaMAML meta-trains it with support = the first ``--support-steps`` transitions of each
trajectory and query = the rest. On held-out tasks (``env.unwrapped.test_tasks``, a separate seed stream) the model
is adapted with plain SGD on the support part and the one-step prediction error (MSE of the predicted next
observation, in observation units) is measured on the query part, which adaptation never sees. Rows:

    copy-last-observation   predict obs_{t+1} = obs_t
    no-adaptation           the meta-learned model (adapt_steps 0)
    adapted                 after 1..K SGD steps (lr --inner-lr) on the task's support transitions

Expect (default run, seed 0, ~5 s CPU): copy baseline 0.107, no adaptation 0.00079, after 5 steps 0.00050;
the ratio adapted(5) / no-adaptation was 0.62, 0.67, 0.45, 0.74 for seeds 0-3. pendulum-mass changes only the
torque's effect, 3u/(m l²), so the mass is identifiable from (obs, action, next obs) and a few steps help.
``no-adaptation`` is the meta-learned initialisation itself (not a separately pretrained multi-task model).
Sequence backbones (gru, ssm, ...) see each trajectory's support/query part as one sequence from a zero state, so
they can also adapt in context: compare their ``no-adaptation`` row. Families whose task does not change the dynamics (velocity/goal/direction tasks) leave
nothing to adapt to: the rows then agree up to noise.

Debug in-process: ``from metarl.apps.cli import main; main(["dynamics", "--num-epochs", "1"])``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="pendulum-mass", help="task family (CLI name or gym id); default pendulum-mass")
    p.add_argument("--env-options", default="{}", help='JSON dict of family options, e.g. \'{"mass_range": [0.5, 4]}\'')
    p.add_argument("--backbone", default="mlp", help="metarl.models name: mlp, gru, lstm, ssm, lru, transformer")
    p.add_argument("--width", type=int, default=64, help="backbone width")
    p.add_argument("--num-epochs", type=int, default=50, help="passes over the training tasks")
    p.add_argument("--meta-batch-size", type=int, default=5, help="tasks per meta-update")
    p.add_argument("--num-train-tasks", type=int, default=20, help="training tasks (sample_tasks(n, seed=seed))")
    p.add_argument("--num-test-tasks", type=int, default=10, help="held-out tasks (test_tasks(n))")
    p.add_argument("--trajectories-per-task", type=int, default=8, help="random-action trajectories per task")
    p.add_argument("--trajectory-length", type=int, default=40, help="transitions per trajectory")
    p.add_argument("--support-steps", type=int, default=10, help="first transitions of a trajectory = support")
    p.add_argument("--inner-lr", type=float, default=0.1, help="inner (and test-time) SGD step size")
    p.add_argument("--inner-steps", type=int, default=1, help="inner steps during meta-training")
    p.add_argument("--outer-lr", type=float, default=3e-3, help="Adam step size of the meta-update")
    p.add_argument("--first-order", action="store_true", help="first-order MAML")
    p.add_argument("--adapt-steps", type=int, default=5, help="K: report the error after 1..K adaptation steps")
    p.add_argument("--seed", type=int, default=0, help="seed of task sampling, data and initialisation")
    p.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    p.add_argument("--out", default=None, help="write the results JSON here")


def _check_args(args: argparse.Namespace) -> dict:
    positive = ["torch_threads", "width", "num_epochs", "meta_batch_size", "num_train_tasks", "num_test_tasks",
                "trajectories_per_task", "trajectory_length", "support_steps", "inner_steps", "adapt_steps"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.support_steps >= args.trajectory_length:
        raise ValueError(f"--support-steps ({args.support_steps}) must be < --trajectory-length "
                         f"({args.trajectory_length}) so that every trajectory has query transitions")
    for name in ("inner_lr", "outer_lr"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    from metarl import models

    if args.backbone not in models.available():
        raise ValueError(f"unknown --backbone {args.backbone!r}; available backbones: {', '.join(models.available())}")
    return _env_options(args)


def _env_options(args: argparse.Namespace) -> dict:
    """``--env-options`` parsed and checked against the family (unknown option, bad value, reversed range)."""
    import metarl.tasks

    try:
        options = json.loads(args.env_options)
    except json.JSONDecodeError as e:
        raise ValueError(f"--env-options is not valid JSON ({e.msg} at character {e.pos}): {args.env_options!r}") from e
    if not isinstance(options, dict):
        raise ValueError(f"--env-options must be a JSON object, got {args.env_options!r}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    for k, v in options.items():
        if k.endswith("_range") and isinstance(v, tuple) and len(v) == 2 and all(
                isinstance(x, (int, float)) for x in v) and not v[0] < v[1]:
            raise ValueError(f"--env-options {k} = {list(v)} is a reversed or empty range: need [low, high] with "
                             "low < high")
    try:
        metarl.tasks.make(args.env, **options).close()
    except TypeError as e:
        bad = [k for k in options if f"'{k}'" in str(e)]
        raise ValueError(f"--env-options: {args.env} does not accept the option(s) {bad or list(options)} "
                         f"({' '.join(str(e).split())})") from e
    except ValueError as e:
        raise ValueError(f"--env-options {args.env_options}: {' '.join(str(e).split())}") from e
    return options


def collect(env, task, *, num_trajectories: int, length: int, rng: np.random.Generator):
    """Random-action transitions of ``task``: x = (obs, action) ``(N, T, Do+Da)``, Δobs ``(N, T, Do)``."""
    env.unwrapped.set_task(task)
    low, high = env.action_space.low, env.action_space.high
    xs, dys, attempts = [], [], 0
    while len(xs) < num_trajectories:
        attempts += 1
        if attempts > 10 * num_trajectories:
            raise ValueError(f"episodes of {env.spec.id} end before --trajectory-length ({length}) steps under "
                             f"random actions; use a shorter --trajectory-length")
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        rows, deltas = [], []
        for _ in range(length):
            action = rng.uniform(low, high).astype(np.float32)
            next_obs, _, terminated, truncated, _ = env.step(action)
            rows.append(np.concatenate([obs, action]))
            deltas.append(next_obs - obs)
            obs = next_obs
            if terminated or truncated:
                break
        if len(rows) == length:
            xs.append(rows)
            dys.append(deltas)
    return torch.tensor(np.array(xs), dtype=torch.float32), torch.tensor(np.array(dys), dtype=torch.float32)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "gymnasium", "mujoco", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return (res.stdout.strip() or None) if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _query_mse(model, query_x, query_y, y_std) -> float:
    """One-step error in observation units: mean over (N, T, Do) of (Δ̂ - Δ)² = ((ŷ - y)·σ_y)² (standardised ŷ, y)."""
    with torch.no_grad():
        pred, _ = model(query_x)  # (N, T, Do), from a zero state
        return float((((pred - query_y) * y_std) ** 2).mean())


def run(args: argparse.Namespace) -> dict:
    """Meta-train, adapt on held-out tasks, return the results dict (also what ``--out`` holds)."""
    import metarl.tasks
    from metarl import models
    from metarl.adaptation import AdaptationConfig, Adapter
    from metarl.maml import MetaMAML

    options = _check_args(args)
    env = metarl.tasks.make(args.env, **options)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    traj = {"num_trajectories": args.trajectories_per_task, "length": args.trajectory_length}
    train = [collect(env, t, rng=rng, **traj) for t in env.unwrapped.sample_tasks(args.num_train_tasks, seed=args.seed)]
    test_tasks = env.unwrapped.test_tasks(args.num_test_tasks)
    test = [collect(env, t, rng=rng, **traj) for t in test_tasks]
    env.close()

    all_x, all_y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    norm = {"x_mean": all_x.mean((0, 1)), "x_std": all_x.std((0, 1)).clamp_min(1e-6),
            "y_mean": all_y.mean((0, 1)), "y_std": all_y.std((0, 1)).clamp_min(1e-6)}
    s = args.support_steps

    def split(x, y):  # standardised (support_x, support_y, query_x, query_y), each (N, T_part, D)
        x, y = (x - norm["x_mean"]) / norm["x_std"], (y - norm["y_mean"]) / norm["y_std"]
        return x[:, :s], y[:, :s], x[:, s:], y[:, s:]

    train_sq, test_sq = [split(*d) for d in train], [split(*d) for d in test]
    model = models.build(args.backbone, input_dim=all_x.shape[-1], output_dim=all_y.shape[-1], width=args.width)
    maml = MetaMAML(model, inner_lr=args.inner_lr, outer_lr=args.outer_lr, first_order=args.first_order,
                    num_inner_steps=args.inner_steps)
    history = []
    for epoch in range(args.num_epochs):
        order = rng.permutation(len(train_sq))
        losses = [maml.meta_update([train_sq[i] for i in order[b : b + args.meta_batch_size]])
                  for b in range(0, len(order), args.meta_batch_size)]
        history.append(float(np.mean(losses)))
        logger.info("epoch %d meta/outer_loss %.5f", epoch, history[-1])

    per_task = np.zeros((len(test_sq), args.adapt_steps + 1))  # (tasks, K+1) query MSE after k steps
    config = AdaptationConfig(learning_rate=args.inner_lr, num_steps=1)
    for i, (sx, sy, qx, qy) in enumerate(test_sq):
        task_model = copy.deepcopy(model)
        adapter = Adapter(task_model, config)
        per_task[i, 0] = _query_mse(task_model, qx, qy, norm["y_std"])
        for k in range(1, args.adapt_steps + 1):
            adapter.update_step(sx, sy)
            per_task[i, k] = _query_mse(task_model, qx, qy, norm["y_std"])
    copy_mse = [float((dy[:, s:] ** 2).mean()) for _, dy in test]

    def row(method, steps, values):
        return {"method": method, "adapt_steps": steps, "mse": float(np.mean(values)),
                "mse_std_across_tasks": float(np.std(values))}

    rows = [row("copy-last-observation", None, copy_mse), row("no-adaptation", 0, per_task[:, 0])]
    rows += [row("adapted", k, per_task[:, k]) for k in range(1, args.adapt_steps + 1)]
    return {
        "command": "metarl dynamics",
        "args": vars(args) | {"env_options": options},
        "seed": args.seed,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "test_tasks": [t.as_array().tolist() for t in test_tasks],
        "meta/outer_loss_per_epoch": history,
        "rows": rows,
    }


def _check_out(out: str) -> None:
    """``--out`` must be a new or existing file in a writable folder (checked before the run)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {path / 'dynamics.json'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write under {parent}")


def main(args: argparse.Namespace) -> int:
    import metarl.tasks

    try:
        metarl.tasks.env_id(args.env)
    except ValueError:
        print(f"metarl dynamics: unknown --env {args.env!r}; known names: {', '.join(metarl.tasks.names())}",
              file=sys.stderr)
        return 2
    try:
        _check_args(args)
        if args.out:
            _check_out(args.out)
    except ValueError as err:
        if getattr(args, "debug", False):
            raise
        print(f"metarl dynamics: error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        result = run(args)
    finally:
        torch.set_num_threads(threads)
    print(f"{'method':<24}{'adapt_steps':>12}{'one-step MSE':>16}{'std (tasks)':>14}")
    for r in result["rows"]:
        steps = "-" if r["adapt_steps"] is None else r["adapt_steps"]
        print(f"{r['method']:<24}{steps:>12}{r['mse']:>16.6f}{r['mse_std_across_tasks']:>14.6f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0
