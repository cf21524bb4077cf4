"""The flags of ``benchmarks/run_mujoco.py`` and ``metarl train`` (one parser) and the ``MAMLConfig`` they make.

The config flags are generated from the table of fields (``rllib_ext.fields.FIELDS``): one flag per field, its
default the table's (shown in ``--help``), its value checked by ``MAMLConfig.validate_meta`` before Ray starts.
The run flags (iterations, output, resume, CPUs) are checked by ``check_run_flags``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from metarl import tasks
from metarl.apps.layout import AUTO, resolve, visible_cores

_TYPES = {int: int, float: float, str: str}
#: count fields that also take "auto": a layout picked from the cores (metarl.apps.layout)
if TYPE_CHECKING:
    from rllib_ext.fields import Field

AUTO_FIELDS = ("num_env_runners", "num_learners")
#: ``--preset auto``: the preset for the task (see ``PRESETS``)
AUTO_PRESET = "auto"
#: the MuJoCo locomotion default, and how ``--help`` says it (BENCHMARKS.md, "HalfCheetahDir ablation" and
#: "HalfCheetahDir to 30 M"): first order learns fastest early (5 M env steps, 2 seeds x both directions held out:
#: 82.8 [10.9, 170.7] vs the table's second order -17.9 [-29.3, -10.8]), but from 6-10 M its outer steps make the
#: exact objective worse in most iterations and a first-order run collapsed at 15.6 M; continued second order from
#: 15 M the same run held 231-260 to 21 M. 9 M: where first order's steps had failed in over half the iterations.
MUJOCO_PRESET_VALUES: dict = {"first_order_until": 9_000_000}
MUJOCO_PRESET_HELP = "first-order meta-gradient for the first 9 M env steps, second order after"

#: ``--preset NAME``: field values set before the flags are read; a flag given on the command line wins.
#: ``auto`` (the flag's default): ``mujoco`` for the MuJoCo locomotion families (``tasks.LOCOMOTION``), else
#: ``default``. ``default``: the table's defaults. ``mujoco``: the best combination of the HalfCheetahDir ablation
#: (BENCHMARKS.md "HalfCheetahDir ablation", ``benchmarks/ablate_hcdir.py``).
#: ``paper``: the published MAML/ProMP configuration as far as our fields go: 40 tasks x 20 episodes, one inner
#: VPG-gradient step with α = 0.1, second order (MAML, Finn et al. 2017, and ProMP, Rothfuss et al. 2019); an MLP of
#: 2 x 100 tanh units (MAML's network); ProMP's outer step: LVC inner objective, 5 Adam steps of lr 1e-3 on the
#: clipped surrogate with ε = 0.3, γ = 0.99, normalised advantages. Not reproduced: ProMP's KL penalty on the
#: pre-update policy and MAML-TRPO's conjugate-gradient step (``--outer-target-kl 0.01`` is its trust region
#: δ = 0.01 by early stopping); the gradient clip and the horizon stay ours (HalfCheetahDir: 100, ProMP's).
PRESETS: dict[str, dict] = {
    "default": {},
    "mujoco": MUJOCO_PRESET_VALUES,
    "paper": {
        "meta_batch_size": 40, "episodes_per_task": 20, "inner_steps": 1, "inner_lr": 0.1, "first_order": False,
        "first_order_until": None,
        "backbone": "mlp", "width": 100, "backbone_kwargs": {"num_layers": 2, "activation": "tanh"},
        "inner_objective": "lvc", "outer_steps": 5, "lr": 1e-3, "clip_param": 0.3, "gamma": 0.99,
        "normalize_advantages": True, "outer_kl_coeff": 0.0, "outer_target_kl": None,
        "outer_monotone": False,
    },
}


def count_or_auto(text: str):
    """argparse type of ``--num-env-runners`` / ``--num-learners``: an integer, or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'auto'") from e


def json_object(text: str) -> dict:
    """argparse type of the dict fields: a JSON object such as ``'{"velocity_range": [0, 3]}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e}); give an object such as '{{\"key\": 1}}'") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; give one such as '{{\"key\": 1}}'")
    return value


def _given(namespace: argparse.Namespace, dest: str) -> None:
    """Record that a field's flag was given on the command line (a preset never overrides it)."""
    namespace.given_fields = getattr(namespace, "given_fields", frozenset()) | {dest}


class _StoreField(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _given(namespace, self.dest)


class _BoolField(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _given(namespace, self.dest)


def _add_field(group, f: Field) -> None:
    help_ = f"{f.help} (default: {f.shown_default()})".replace("%", "%%")
    if f.kind is bool:
        group.add_argument(f.option, action=_BoolField, default=f.default, help=help_)
        return
    default = dict(f.default) if isinstance(f.default, dict) else f.default
    kind = json_object if f.kind is dict else count_or_auto if f.name in AUTO_FIELDS else _TYPES[f.kind]
    if f.name in AUTO_FIELDS:
        help_ = help_.replace(" (default:", "; 'auto': picked from the cores (default:")
    group.add_argument(f.option, action=_StoreField, type=kind, default=default, help=help_)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``benchmarks/run_mujoco.py`` and ``metarl train``: the run's, then one per config field."""
    from rllib_ext.fields import FIELDS  # lazily: `metarl --help` imports no RLlib

    run = parser.add_argument_group("run")
    run.add_argument("--iterations", type=int, default=60, help="TOTAL meta-iterations, also under --resume (default: 60)")
    run.add_argument("--num-cpus", type=int, default=None,
                     help="CPUs of an embedded Ray, >= 1 (default: all of this machine's)")
    run.add_argument("--out", default="runs/mujoco", help="run folder, or a URI such as s3://bucket/run, file:///x (default: runs/mujoco)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest")
    run.add_argument("--checkpoint-every", type=int, default=20, help="checkpoint every N iterations and at the end (default: 20)")
    run.add_argument("--torch-threads", type=int, default=1,
                     help="torch threads of this process (it samples and learns when runners/Learners are 0); more "
                          "than 1 pays only for large matrices on idle cores, and costs up to 10x on busy ones "
                          "(default: 1; remote runners and Learners always use 1)")
    run.add_argument("--preset", choices=[AUTO_PRESET, *sorted(PRESETS)], default=AUTO_PRESET,
                     help="a set of field values applied first; flags given explicitly win: 'mujoco' = the MuJoCo "
                          f"locomotion default ({MUJOCO_PRESET_HELP}), 'paper' = the published MAML/ProMP "
                          "configuration (40 tasks x 20 episodes, MLP 2 x 100 tanh, LVC, ...), 'default' = the "
                          "table's defaults, 'auto' = 'mujoco' for the MuJoCo locomotion families, else 'default' "
                          "(default: auto)")
    meta = parser.add_argument_group("MAML (MAMLConfig.meta fields)")
    outer = parser.add_argument_group("outer loop, resources and seed (MAMLConfig's RLlib fields)")
    for f in FIELDS:
        _add_field(meta if f.builder == "meta" else outer, f)
    return parser


def check_run_flags(args: argparse.Namespace) -> None:
    """ValueError naming the flag, the value and what is allowed (the config flags are the config's to check)."""
    for flag in ("iterations", "checkpoint_every", "torch_threads"):
        v = getattr(args, flag)
        if v < 1:
            raise ValueError(f"--{flag.replace('_', '-')} = {v} is invalid: an integer >= 1")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"--num-cpus = {args.num_cpus} is invalid: an integer >= 1, or omit the flag for all of "
                         "this machine's CPUs")


def say(line: str) -> None:
    """Print one line at once (the run's progress goes through pipes and logs)."""
    print(line, flush=True)


def apply_preset(args: argparse.Namespace, echo=say) -> dict:
    """Set the fields of ``--preset`` on ``args`` except those whose flag was given (once; ``echo``es what it set).
    Returns {field: value} set. ValueError naming the flag, the value and the presets for an unknown name."""
    from rllib_ext.fields import BY_NAME

    name = getattr(args, "preset", None) or AUTO_PRESET
    if name != AUTO_PRESET and name not in PRESETS:
        raise ValueError(f"--preset = {name!r} is invalid: one of {[AUTO_PRESET, *sorted(PRESETS)]}")
    if getattr(args, "preset_applied", None) is not None:
        return args.preset_applied
    shown = name
    if name == AUTO_PRESET:
        name = "mujoco" if args.task in tasks.LOCOMOTION else "default"
        shown = f"{AUTO_PRESET} ({name}: task {args.task})"
    given = getattr(args, "given_fields", frozenset())
    applied = {}
    for field, value in PRESETS[name].items():
        f = BY_NAME[field]
        if f.dest not in given:  # the values are checked with the flags' (config_from_args)
            setattr(args, f.dest, dict(value) if isinstance(value, dict) else value)
            applied[field] = value
    args.preset_applied = applied
    if applied:
        kept = sorted(BY_NAME[k].option for k in PRESETS[name] if k not in applied)
        echo(f"--preset {shown} set " + ", ".join(f"{k}={v!r}" for k, v in applied.items())
             + (f" (given flags kept: {', '.join(kept)})" if kept else ""))
    return applied


def resolve_layout(args: argparse.Namespace, echo=say) -> None:
    """Replace ``auto`` runner/Learner counts by the layout for the cores (``--num-cpus``, else the cores this
    process may use); the picked layout is kept as ``args.layout`` (None when nothing was ``auto``). The preset
    is applied first (it may set ``meta_batch_size``, which the layout reads)."""
    apply_preset(args, echo)
    if getattr(args, "layout", None) is not None:
        return  # resolved already
    cores = args.num_cpus or visible_cores()
    args.num_env_runners, args.num_learners, args.layout = resolve(
        args.num_env_runners, args.num_learners, cores=cores, meta_batch_size=args.meta_batch_size)


def config_from_args(args: argparse.Namespace):
    """``MAMLConfig`` from parsed flags: every field of the table set through its builder (``.meta``,
    ``.training``, ``.env_runners``, ``.learners``, ``.debugging``). Each value is checked by its row of the table;
    the fields together (sizes, GPUs, options) are checked by ``MAMLConfig.validate_meta`` in ``prepare``."""
    from rllib_ext.config import MAMLConfig
    from rllib_ext.fields import BUILDERS, FIELDS, check_field

    check_run_flags(args)
    resolve_layout(args)
    if args.eval_every and args.budget_iterations is None and hasattr(args, "iterations"):
        args.budget_iterations = args.iterations  # so the run's last iteration gets its held-out evaluation
    for f in FIELDS:  # before RLlib's builders, which raise their own errors for some values
        check_field(f, getattr(args, f.dest))
    config = MAMLConfig()
    for builder in BUILDERS:
        getattr(config, builder)(**{f.name: getattr(args, f.dest) for f in FIELDS if f.builder == builder})
    return config
