"""The flags of ``benchmarks/run_mujoco.py`` and ``metarl train`` (one parser) and the ``MAMLConfig`` they make."""

from __future__ import annotations

import argparse

from metarl import tasks


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
    from rllib_ext.config import MAMLConfig

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

