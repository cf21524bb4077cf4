"""The run loop shared by ``benchmarks/run_mujoco.py`` and ``python -m metarl.train`` (one parser, one loop).

``add_arguments(parser)`` defines the flags, ``config_from_args(args)`` turns them into a ``MAMLConfig`` and
``run(args)`` validates everything (before Ray starts), trains to ``--iterations`` TOTAL iterations (also under
``--resume``) and writes into ``--out``::

    results.json       {"provenance": {...}, "resumes": [...], "records": [one flat dict per iteration]}
    progress.csv       the scalar columns of the records
    tb/                TensorBoard events (tensorboardX)
    adaptation.png     mean return before (θ) and after each inner step (θ_k) per iteration
    checkpoints/checkpoint_<iteration:06d>/, checkpoints/latest   (rllib_ext.checkpoint: crash-safe)

Logged metrics (record keys; glossary):
    adapt/return_step_k   mean episode return over the meta-batch with θ_k (k inner steps; k=0 = before adaptation)
    adapt/gain            adapt/return_step_K - adapt/return_step_0
    meta/outer_loss       ProMP clipped surrogate of the adapted policy at the first outer step
    meta/logp_mismatch    max |log π recomputed by the Learner - log π recorded by the sampler| (≈0 when consistent)
    inner/loss            VPG loss of the inner steps;  env_steps/*  sampled steps;  time/*  seconds
    task_params           the meta-batch's tasks as arrays (Task.as_array()), to check resumed runs

Ray: an already initialised Ray is used as is; with ``RAY_ADDRESS`` set (inside ``ray job submit``) a bare
``ray.init()`` joins that cluster; otherwise an embedded ``ray.init(num_cpus=..., include_dashboard=False)``.
No module-level Ray import: ``metarl train --help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from metarl import tasks
from metarl.provenance import json_safe, provenance
from rllib_ext.checkpoint import clean_partial, iteration_of, latest_checkpoint, save_checkpoint, write_text_atomic

logger = logging.getLogger(__name__)

RESULTS = "results.json"
#: config fields that decide the shape of the weights: a resume must not change them
STRUCTURAL = ("task", "backbone", "width", "backbone_kwargs", "dtype")
#: result sections copied into the records (the rest of RLlib's result dict is bookkeeping)
SECTIONS = ("adapt", "meta", "inner", "env_steps", "time", "tasks")
#: sections whose non-finite values stop the run (component named in the error)
CHECKED = {"adapt": "EnvRunner returns", "inner": "EnvRunner inner step", "meta": "Learner meta-update"}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``benchmarks/run_mujoco.py`` and ``metarl train`` (the MAML knobs default to MAMLConfig's)."""
    run = parser.add_argument_group("run")
    run.add_argument("--task", default="halfcheetah-dir", help=f"task family, one of: {', '.join(tasks.names())}")
    run.add_argument("--backbone", default="mlp", help="policy backbone, a metarl.models.available() name")
    run.add_argument("--iterations", type=int, default=60, help="TOTAL meta-iterations (also under --resume)")
    run.add_argument("--num-env-runners", type=int, default=0, help="remote EnvRunners (0: sample in the driver)")
    run.add_argument("--num-envs-per-runner", type=int, default=10, help="vectorised sub-envs per EnvRunner")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded Ray (default: all)")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and of the task sampler")
    run.add_argument("--out", default="runs/mujoco", help="run folder, or a URI such as s3://bucket/run, file:///x")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest")
    run.add_argument("--checkpoint-every", type=int, default=20, help="checkpoint every N iterations (and at the end)")
    maml = parser.add_argument_group("MAML (None = MAMLConfig default)")
    maml.add_argument("--horizon", type=int, default=None, help="episode length (task_options max_episode_steps)")
    maml.add_argument("--inner-lr", type=float, default=None, help="α of the inner VPG step (default 0.1)")
    maml.add_argument("--inner-steps", type=int, default=None, help="inner steps K (0 = multi-task baseline)")
    maml.add_argument("--meta-batch-size", type=int, default=20, help="tasks per meta-iteration")
    maml.add_argument("--episodes-per-task", type=int, default=10, help="episodes per task per inner step")
    maml.add_argument("--first-order", action="store_true", help="first-order MAML (no second-order term)")
    maml.add_argument("--outer-steps", type=int, default=None, help="Adam steps per meta-iteration (default 5)")
    maml.add_argument("--outer-lr", type=float, default=None, help="Adam lr of the meta-update (default 1e-3)")
    maml.add_argument("--clip-param", type=float, default=None, help="ProMP surrogate clip ε (default 0.3)")
    maml.add_argument("--width", type=int, default=64, help="backbone width")
    maml.add_argument("--num-learners", type=int, default=0, help="remote Learners (0: one in the driver)")
    maml.add_argument("--num-gpus-per-learner", type=float, default=0, help="GPUs per Learner")
    return parser


def config_from_args(args: argparse.Namespace):
    """``MAMLConfig`` from parsed flags (not validated: ``prepare`` validates)."""
    from rllib_ext.algorithm import MAMLConfig

    task_options = {"max_episode_steps": args.horizon} if args.horizon is not None else {}
    meta = dict(
        task=args.task,
        backbone=args.backbone,
        width=args.width,
        meta_batch_size=args.meta_batch_size,
        episodes_per_task=args.episodes_per_task,
        first_order=bool(args.first_order),
        task_options=task_options,
    )
    for flag, field in (("inner_lr", "inner_lr"), ("inner_steps", "inner_steps"), ("outer_steps", "outer_steps"),
                        ("clip_param", "clip_param")):
        if getattr(args, flag) is not None:
            meta[field] = getattr(args, flag)
    config = (
        MAMLConfig()
        .meta(**meta)
        .env_runners(num_env_runners=args.num_env_runners, num_envs_per_env_runner=args.num_envs_per_runner)
        .learners(num_learners=args.num_learners, num_gpus_per_learner=args.num_gpus_per_learner)
        .debugging(seed=args.seed)
    )
    if args.outer_lr is not None:
        config.training(lr=args.outer_lr)
    return config


# --- output folder: local path or URI -----------------------------------------------------------------------------
def is_uri(out: str) -> bool:
    return "://" in str(out)


class Output:
    """The run folder. For a URI the run is written to a local temp folder and uploaded with ``pyarrow.fs``."""

    def __init__(self, out: str):
        self.out = str(out)
        if is_uri(self.out):
            import pyarrow.fs as pafs

            self.fs, self.remote = pafs.FileSystem.from_uri(self.out)
            self.local = Path(tempfile.mkdtemp(prefix="metarl-run-"))
        else:
            self.fs = self.remote = None
            self.local = Path(self.out)

    def remote_exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.remote}/{rel}").type != pafs.FileType.NotFound

    def download(self) -> None:
        """Fetch results and checkpoints of an earlier run (URI only)."""
        import pyarrow.fs as pafs

        if self.fs is not None and self.remote_exists(""):
            pafs.copy_files(self.remote, str(self.local), source_filesystem=self.fs)

    def upload(self, *rel: str) -> None:
        """Copy ``rel`` paths (files or folders) to the URI, in the given order (URI only)."""
        import pyarrow.fs as pafs

        if self.fs is None:
            return
        for r in rel:
            src = self.local / r
            if src.exists():
                if src.is_dir():
                    self.fs.create_dir(f"{self.remote}/{r}", recursive=True)
                pafs.copy_files(str(src), f"{self.remote}/{r}", destination_filesystem=self.fs)

    def cleanup(self) -> None:
        if self.fs is not None:
            shutil.rmtree(self.local, ignore_errors=True)


# --- validation, before Ray -----------------------------------------------------------------------------------------
def _read_results(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} exists but cannot be read as JSON ({e}); refusing to overwrite it") from e


def prepare(args: argparse.Namespace) -> dict:
    """Validate flags, config and output folder; return the plan. Raises ValueError (values in the message)."""
    config = config_from_args(args)
    config.validate_meta()
    for flag in ("iterations", "checkpoint_every", "num_envs_per_runner"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} = {getattr(args, flag)} must be >= 1")
    for flag in ("num_env_runners", "num_learners"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} = {getattr(args, flag)} must be >= 0")
    output = Output(args.out)
    exists = output.remote_exists(RESULTS) if output.fs is not None else (output.local / RESULTS).exists()
    if exists and not args.resume:
        output.cleanup()
        raise ValueError(
            f"--out {args.out} already holds {RESULTS}: pass --resume to continue that run (with --iterations as the "
            "new TOTAL) or choose another --out; nothing was overwritten"
        )
    plan = {"config": config, "output": output, "start": 0, "checkpoint": None, "results": None}
    if args.resume and exists:
        output.download()
        results = _read_results(output.local / RESULTS)
        ckpt = latest_checkpoint(output.local)  # raises if `latest` names a broken folder
        done = iteration_of(ckpt) if ckpt is not None else 0
        if args.iterations < done:
            output.cleanup()
            raise ValueError(
                f"--iterations = {args.iterations} is below the {done} iterations already completed in {args.out} "
                f"(checkpoint {ckpt.name if ckpt else None}); --iterations is the TOTAL: pass >= {done}. "
                "Nothing was overwritten"
            )
        old = (results.get("provenance") or {}).get("config") or {}
        new = provenance_config(config)
        changed = {k: (old.get(k), new.get(k)) for k in STRUCTURAL if k in old and old.get(k) != new.get(k)}
        if changed:
            output.cleanup()
            raise ValueError(
                f"--resume of {args.out} with a different model/task: {changed} (stored, given); the checkpoint's "
                "weights do not fit. Use the original flags or another --out"
            )
        plan.update(start=done, checkpoint=ckpt, results=results)
    return plan


def provenance_config(config) -> dict:
    return json_safe(config.to_dict())


# --- records ----------------------------------------------------------------------------------------------------
def flatten(result: dict, prefix: str = "") -> dict:
    """Nested RLlib result -> {"adapt/return_step_0": float, ...} (numeric leaves of ``SECTIONS`` only)."""
    out = {}
    for k, v in result.items():
        if not prefix and k not in SECTIONS:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def check_finite(record: dict, iteration: int) -> None:
    """FloatingPointError naming the iteration, the metric and the component when a loss/return is not finite."""
    for key, v in record.items():
        section = key.split("/", 1)[0]
        if section in CHECKED and isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(
                f"iteration {iteration}: {key} = {v} is not finite (component: {CHECKED[section]}); run stopped "
                "without checkpointing this iteration: the last good checkpoint is kept"
            )


def write_outputs(run_dir: Path, results: dict) -> None:
    """results.json (atomically) and progress.csv from the records."""
    write_text_atomic(run_dir / RESULTS, json.dumps(json_safe(results), indent=1))
    records = results["records"]
    cols = sorted({k for r in records for k, v in r.items() if not isinstance(v, list)})
    cols = ["iteration", *[c for c in cols if c != "iteration"]]
    tmp = run_dir / ".progress.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    os.replace(tmp, run_dir / "progress.csv")


def plot_adaptation(run_dir: Path, records: list[dict]) -> None:
    """adaptation.png: adapt/return_step_k per iteration, k = 0 (before adaptation) .. K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in records]
    steps = sorted({int(k.rsplit("_", 1)[1]) for r in records for k in r if k.startswith("adapt/return_step_")})
    for k in steps:
        ax.plot(its, [r.get(f"adapt/return_step_{k}", np.nan) for r in records], marker="o", ms=3,
                label="before adaptation (θ)" if k == 0 else f"after {k} inner step{'s' * (k > 1)} (θ_{k})")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean return over the meta-batch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / ".adaptation.tmp.png", dpi=100)
    plt.close(fig)
    os.replace(run_dir / ".adaptation.tmp.png", run_dir / "adaptation.png")


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(record: dict, *, total: int, eta_s: float) -> str:
    k = max(int(key.rsplit("_", 1)[1]) for key in record if key.startswith("adapt/return_step_"))
    before, after = record["adapt/return_step_0"], record[f"adapt/return_step_{k}"]
    steps = record.get("env_steps/this_iter", 0.0)
    wall = record.get("wall_s", float("nan"))
    return (
        f"iter {record['iteration']:>4d}/{total} | return before {before:9.2f} after {after:9.2f} "
        f"(gain {after - before:+8.2f}) | {int(steps):>7,d} steps {steps / wall:7.0f} steps/s | "
        f"{wall:6.1f} s/it | ETA {_fmt_s(eta_s)}"
    )


# --- the loop -----------------------------------------------------------------------------------------------------
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
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    return True


def _init_ray(args) -> bool:
    """``start_or_join_ray`` with at least one CPU for the driver and each EnvRunner and Learner."""
    need = 1 + args.num_env_runners + args.num_learners
    return start_or_join_ray(max(args.num_cpus or os.cpu_count() or 1, need))


def run(args: argparse.Namespace, *, echo: Callable[[str], None] = print) -> dict:
    """Train to ``args.iterations`` total iterations; returns {"out", "completed", "last", "checkpoint", ...}."""
    plan = prepare(args)
    config, output, start = plan["config"], plan["output"], plan["start"]
    run_dir = output.local
    total = args.iterations
    seeds = {"seed": args.seed, "task_seed": config.task_seed if config.task_seed is not None else args.seed}
    prov = provenance(config=config, seeds=seeds, extra={"args": vars(args)})
    results = plan["results"] or {"provenance": prov, "resumes": [], "records": []}
    if plan["results"] is not None:
        dropped = [r["iteration"] for r in results["records"] if r["iteration"] > start]
        results["records"] = [r for r in results["records"] if r["iteration"] <= start]  # re-run after the checkpoint
        results["resumes"].append({"from_iteration": start, "dropped_records": dropped, "provenance": prov})
    if start >= total:
        echo(f"{args.out}: {start} of {total} iterations already done; nothing to do")
        output.cleanup()
        return {"out": args.out, "completed": start, "last": (results["records"] or [None])[-1], "checkpoint": None}
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir)

    started_ray = _init_ray(args)
    algo = writer = None
    ckpt = plan["checkpoint"]
    try:
        from tensorboardX import SummaryWriter

        algo = config.build_algo()
        if ckpt is not None:
            algo.restore_from_path(str(ckpt.resolve()))
            if algo.iteration != start:
                raise RuntimeError(f"restored {ckpt} but the Algorithm reports iteration {algo.iteration} != {start}")
            echo(f"resumed {args.out} from {ckpt.name} (iteration {start}); target {total}")
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)
        t_loop = time.perf_counter()
        for it in range(start + 1, total + 1):
            t0 = time.perf_counter()
            try:
                result = algo.train()
            except FloatingPointError as e:
                raise FloatingPointError(f"iteration {it}: Learner meta-update failed: {e}") from e
            record = {"iteration": int(algo.iteration), **flatten(result), "wall_s": time.perf_counter() - t0}
            record["task_params"] = [np.asarray(t.as_array()).tolist() for t in algo.last_tasks]
            check_finite(record, it)
            results["records"].append(record)
            write_outputs(run_dir, results)
            for key, v in record.items():
                if isinstance(v, float):
                    writer.add_scalar(key, v, it)
            writer.flush()
            done_here = it - start
            eta = (time.perf_counter() - t_loop) / done_here * (total - it)
            echo(progress_line(record, total=total, eta_s=eta))
            if it % args.checkpoint_every == 0 or it == total:
                ckpt = save_checkpoint(algo, run_dir, it)
                plot_adaptation(run_dir, results["records"])
                output.upload(f"checkpoints/{ckpt.name}", "checkpoints/latest", RESULTS, "progress.csv",
                              "adaptation.png", "tb")
        last = results["records"][-1]
        where = f"{args.out.rstrip('/')}/checkpoints/{ckpt.name}" if output.fs is not None else str(ckpt)
        return {"out": args.out, "completed": total, "last": last, "checkpoint": where,
                "env_steps": last.get("env_steps/lifetime"), "records": len(results["records"])}
    finally:
        if writer is not None:
            writer.close()
        if algo is not None:
            algo.stop()
        if started_ray:
            import ray

            ray.shutdown()
        output.cleanup()
