"""``metarl sweep``: compare backbones x task families x methods x seeds with a Ray Tune sweep.

    metarl sweep --backbones gru,ssm --tasks halfcheetah-dir,ant-dir --seeds 3 --gpus-per-trial 0.25
    metarl sweep --backbones gru,mlp --tasks navigation-2d --seeds 1 --smoke --storage runs/sweeps --name try
    metarl report runs/sweeps/try

The sweep itself is data (``tune_configs/baselines.py``): a grid over ``MAMLConfig`` fields, backbones matched to
the same parameter budget, method "maml", the non-meta "multitask" baseline (``inner_steps=0``) and "rl2", crossed
with ``--memory episode,trial`` (a trial-memory method is labelled "maml+trial"; rl2 is trial memory). Every trial
stops at the same training budget in env steps (``--env-steps``; ``--iterations`` is the alternative stop) and
evaluates itself on the family's held-out test tasks at the same env steps (every ``eval_every`` iterations of
MAML's, (K+1) x as many of multitask's and RL²'s) and at the end (``eval/...``,
the metric that ranks; ``--scheduler asha``: one ASHA per task family on it). Bad axes or
an unwritable ``--storage`` fail before Ray starts. While it runs, one line per trial result is printed
(``tune_configs/progress.py``); results land in ``<storage>/<name>/<trial>/{params.json,progress.csv,...}``.
Failed trials are retried from their last checkpoint (``SweepSize.max_failures``). Inside ``ray job submit``
(``RAY_ADDRESS`` set) the sweep runs on that cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--backbones", default=None, help="comma-separated backbones (default: every registered one)")
    parser.add_argument("--tasks", default="halfcheetah-vel,halfcheetah-dir,ant-dir,ant-goal,humanoid-dir",
                        help="comma-separated task families")
    parser.add_argument("--methods", default="maml,multitask",
                        help="comma-separated: maml, multitask (inner_steps=0), rl2 (inner_steps=0, trial memory)")
    parser.add_argument("--memory", default="episode",
                        help="comma-separated memory axis: episode and/or trial, crossed with the methods except rl2 "
                             "(trial by definition); a trial-memory method is labelled e.g. maml+trial")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (task, backbone, method) cell")
    parser.add_argument("--smoke", action="store_true", help="tiny trials (2 CPUs, minutes): same as --size smoke")
    parser.add_argument("--size", choices=["smoke", "laptop", "desktop", "full"], default=None,
                        help="trial size (tune_configs/baselines.py SIZES; default full, or smoke with --smoke)")
    parser.add_argument("--storage", default="runs/sweeps", help="folder, file:///folder or s3://bucket/prefix")
    parser.add_argument("--name", default=None, help="experiment name (default: sweep-<date>-<time>)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial, split over its Learners (fractions share a GPU)")
    parser.add_argument("--env-steps", type=int, default=None,
                        help="training budget per trial in env_steps/lifetime, every method alike (default: size's)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="meta-iterations per trial instead (with --env-steps too: whichever comes first)")
    parser.add_argument("--scheduler", choices=["fifo", "asha"], default=None,
                        help="fifo, or asha = one ASHA per task family on the held-out metric (default: size's)")
    parser.add_argument("--target-params", type=int, default=None, help="parameter budget of every backbone")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded Ray (default: all)")
    parser.add_argument("--resume", action="store_true", help="resume the experiment <storage>/<name>")
    return parser


def plan(args: argparse.Namespace) -> dict:
    """Validate everything that can be checked without Ray; ValueError names the flag and the value."""
    from metarl import models
    from tune_configs.baselines import SIZES, check_axes, make_scheduler, stop_criteria, with_size
    from tune_configs.storage import check_storage

    backbones = _csv(args.backbones) if args.backbones is not None else models.available()
    task_names, methods, memories = _csv(args.tasks), _csv(args.methods), _csv(getattr(args, "memory", "episode"))
    check_axes(backbones=backbones, task_names=task_names, seeds=args.seeds, methods=methods, memories=memories)
    size = SIZES[args.size or ("smoke" if args.smoke else "full")]
    changes = _size_changes(args)
    if args.gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial = {args.gpus_per_trial} must be >= 0")
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"--name {name!r} must be a plain folder name")
    size = with_size(size, **changes)
    stop_criteria(size)  # a budget, and the scheduler's needs, checked before Ray starts
    make_scheduler(size)
    storage = check_storage(args.storage)
    return dict(backbones=backbones, task_names=task_names, methods=methods, memories=memories, seeds=args.seeds,
                size=size, name=name, storage=storage, gpus_per_trial=args.gpus_per_trial)


def _size_changes(args: argparse.Namespace) -> dict:
    """SweepSize fields set by flags. ``--iterations`` alone replaces the size's env-step budget."""
    changes = {}
    for flag in ("iterations", "env_steps", "target_params"):
        v = getattr(args, flag, None)
        if v is not None:
            if v < 1:
                raise ValueError(f"--{flag.replace('_', '-')} = {v} must be >= 1")
            changes[flag] = v
    if "iterations" in changes and "env_steps" not in changes:
        changes["env_steps"] = None
    if getattr(args, "scheduler", None):
        changes["scheduler"] = args.scheduler
    return changes


def run_sweep(p: dict, *, echo=print, resume: bool = False):
    """Run the planned sweep on the current Ray (``ray.init`` done by the caller); returns the ``ResultGrid``."""
    from ray import tune

    from metarl.apps.provenance import json_safe, provenance
    from rllib_ext.algorithm import MAML
    from tune_configs.baselines import METRIC, make_scheduler, matched_widths, param_space, stop_criteria
    from tune_configs.progress import ProgressPrinter, trial_dirname

    size = p["size"]
    uri = p["storage"].rstrip("/") + "/" + p["name"]
    if resume:
        if not tune.Tuner.can_restore(uri):
            raise ValueError(f"--resume: no Tune experiment to resume at {uri}")
        tuner = tune.Tuner.restore(uri, trainable=MAML, resume_errored=True)
        return tuner.fit()
    widths = matched_widths(backbones=p["backbones"], task_names=p["task_names"], target_params=size.target_params)
    for task, row in widths.items():
        echo(f"{task}: matched widths (backbone params, target {size.target_params}): "
             + ", ".join(f"{b} {v['width']} ({v['backbone_params']})" for b, v in row.items()))
    space = param_space(size, backbones=p["backbones"], task_names=p["task_names"], seeds=p["seeds"],
                        methods=p["methods"], widths=widths, gpus_per_trial=p["gpus_per_trial"],
                        memories=p.get("memories", ["episode"]))
    scheduler = make_scheduler(size)
    tuner = tune.Tuner(
        MAML,
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=p["name"],
            storage_path=p["storage"],
            stop=stop_criteria(size),
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=size.checkpoint_frequency,
                                                    checkpoint_at_end=True, num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=size.max_failures),
            callbacks=[ProgressPrinter()],
            verbose=0,
        ),
    )
    meta = {"provenance": provenance(config=None, seeds={"seeds": list(range(p["seeds"]))}),
            "plan": {k: v for k, v in p.items() if k != "size"}, "size": dataclasses.asdict(size),
            "matched_widths": widths, "metric": METRIC}
    _write_sweep_json(uri, json_safe(meta))
    return tuner.fit()


def _write_sweep_json(uri: str, meta: dict) -> None:
    """``<experiment>/sweep.json``: what the sweep was asked to do (read by ``metarl report``)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri if "://" in uri else Path(uri).as_uri())
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/sweep.json") as f:
        f.write(json.dumps(meta, indent=1).encode())


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        p = plan(args)
    except ValueError as e:
        print(f"metarl sweep: error: {e}", file=sys.stderr)
        return 2
    import ray

    from metarl.apps.ray_session import start_or_join_ray

    started = start_or_join_ray(args.num_cpus)
    try:
        grid = run_sweep(p, resume=args.resume)
    except ValueError as e:
        print(f"metarl sweep: error: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    errors = [r for r in grid if r.error is not None]
    where = p["storage"].rstrip("/") + "/" + p["name"]
    print(f"{len(grid)} trials, {len(errors)} failed; results in {where}; summarize with: metarl report {where}")
    return 1 if errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m metarl.sweep", description=__doc__.splitlines()[0])
    sys.exit(main(add_arguments(parser).parse_args()))
