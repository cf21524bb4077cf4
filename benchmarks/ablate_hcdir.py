"""One-knob ablation of MAML on HalfCheetahDir (H=100) at a fixed env-step budget, with held-out evaluation.

Run (the full ablation: 22 variants x 2 seeds x 5 M env steps; about 5-8 hours on one idle core)::

    .venv/bin/python benchmarks/ablate_hcdir.py                                  # everything, resumable
    .venv/bin/python benchmarks/ablate_hcdir.py --variants default,lvc --seeds 1 # a subset
    .venv/bin/python benchmarks/ablate_hcdir.py --dry-run                        # print the plan and commands

Each variant is the default configuration with ONE knob changed (``VARIANTS``: inner objective, first/second
order, outer steps, outer lr, ProMP's KL term, a KL trust region, meta-batch size, episodes per task, width and
activation, inner lr, advantage normalisation) or a combination (the ``paper`` preset, with and without the trust
region; the knobs that moved the return most, together). Every (variant, seed) is one ``python -m metarl.train`` run in its own process (its own embedded Ray),
trained for ceil(budget / env steps per iteration) iterations, then evaluated on the held-out tasks by
``python -m metarl evaluate`` (``--eval-tasks 2`` = both directions, ``--eval-episodes 20`` episodes each before
and after one inner step; written to RUN/heldout_<iterations>.json). Results: ``docs/results/hcdir_ablation.json``
and a markdown table (knob, value, held-out return after one inner step: mean and 95% two-level bootstrap
interval over seeds x directions, its difference to the first variant with that difference's interval, training
env steps per seed, wall time of all seeds).

Resumable: a (variant, seed) whose run holds its last iteration is not re-trained (and not re-evaluated once its
evaluation file exists); one with fewer iterations is continued from its checkpoint (``--resume``). Several
processes may share the plan and its JSON (one per core, e.g. the same command twice): a run that another live
process is training (its run folder's lock) is skipped, and each process keeps the runs the others wrote; run it
once more at the end to collect all. Expected numbers: BENCHMARKS.md, "HalfCheetahDir ablation" (the first-order
meta-gradient +101 over the default at 5 M). Debug one run in-process: run its printed command (``--dry-run``)
with ``python -m metarl.train ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from metarl import tasks  # noqa: E402
from metarl.apps.provenance import provenance  # noqa: E402
from metarl.apps.run_folder import RunLock  # noqa: E402
from metarl.apps.stats import difference, interval  # noqa: E402

#: (name, knob, value, flags) — flags on top of the default configuration (the table's defaults)
VARIANTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("default", "(none)", "defaults", ()),
    ("lvc", "inner_objective", "lvc", ("--inner-objective", "lvc")),
    ("first-order", "first_order", "True", ("--first-order",)),
    ("outer-steps-1", "outer_steps", "1", ("--outer-steps", "1")),
    ("outer-steps-10", "outer_steps", "10", ("--outer-steps", "10")),
    ("outer-lr-3e-4", "outer lr", "3e-4", ("--outer-lr", "3e-4")),
    ("outer-lr-3e-3", "outer lr", "3e-3", ("--outer-lr", "3e-3")),
    ("outer-kl-1", "outer_kl_coeff", "1.0", ("--outer-kl-coeff", "1.0")),
    ("target-kl-0.01", "outer_target_kl", "0.01", ("--outer-target-kl", "0.01")),
    ("meta-batch-40", "meta_batch_size", "40", ("--meta-batch-size", "40")),
    ("episodes-20", "episodes_per_task", "20", ("--episodes-per-task", "20")),
    ("width-100", "width", "100", ("--width", "100")),
    ("tanh", "activation (backbone_kwargs)", "tanh", ("--backbone-kwargs", '{"activation": "tanh"}')),
    ("inner-lr-0.05", "inner_lr", "0.05", ("--inner-lr", "0.05")),
    ("inner-lr-0.2", "inner_lr", "0.2", ("--inner-lr", "0.2")),
    ("no-adv-norm", "normalize_advantages", "False", ("--no-normalize-advantages",)),
    ("paper", "preset", "paper", ("--preset", "paper")),
    ("paper-target-kl", "preset + outer_target_kl", "paper, 0.01", ("--preset", "paper", "--outer-target-kl", "0.01")),
    ("paper-first-order", "preset + first_order", "paper, True", ("--preset", "paper", "--first-order")),
    # combinations of the single knobs that moved the held-out return most in the first screening runs
    ("fo-os10", "first_order + outer_steps", "True, 10", ("--first-order", "--outer-steps", "10")),
    ("fo-lr3e-3", "first_order + outer lr", "True, 3e-3", ("--first-order", "--outer-lr", "3e-3")),
    ("fo-os10-lr3e-3", "first_order + outer_steps + outer lr", "True, 10, 3e-3",
     ("--first-order", "--outer-steps", "10", "--outer-lr", "3e-3")),
)
BY_NAME = {v[0]: v for v in VARIANTS}


def parse_args(argv: list[str] | None = None, *, by_name: dict | None = None, doc: str = "",
               defaults: dict | None = None) -> argparse.Namespace:
    """The flags; ``by_name`` (default: this file's ``BY_NAME``) is the variant table, ``defaults`` overrides the
    flags' defaults (another benchmark's root, results, task, ...)."""
    by_name = BY_NAME if by_name is None else by_name
    p = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0])
    p.add_argument("--variants", default="all", help="comma-separated names of VARIANTS, or 'all' (default: all)")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per variant (default: 2)")
    p.add_argument("--budget", type=int, default=5_000_000, help="training env steps per run (default: 5000000)")
    p.add_argument("--task", default="halfcheetah-dir", help="task family (default: halfcheetah-dir)")
    p.add_argument("--eval-tasks", type=int, default=2, help="held-out tasks (HalfCheetahDir: 2 = both directions)")
    p.add_argument("--eval-episodes", type=int, default=20, help="held-out episodes per task (default: 20)")
    p.add_argument("--root", default="runs/hcdir-ablation", help="run folders: ROOT/VARIANT/seedK")
    p.add_argument("--results", default="docs/results/hcdir_ablation.json", help="the JSON written")
    p.add_argument("--base-args", default="--preset default",
                   help="flags before each variant's own: the configuration every variant changes one knob of "
                        "(default: --preset default, the field table's defaults, on every task)")
    p.add_argument("--train-args", default="--num-env-runners auto",
                   help="more flags of every `metarl train` run, e.g. resources (default: --num-env-runners auto)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.set_defaults(**(defaults or {}))
    args = p.parse_args(argv)
    names = list(by_name) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        p.error(f"--variants: unknown {unknown}; allowed: {list(by_name)} or 'all'")
    for flag in ("seeds", "budget", "eval_tasks", "eval_episodes"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} = {getattr(args, flag)} is invalid: an integer >= 1")
    args.names, args.by_name = names, by_name
    return args


def train_config(flags: list[str]):
    """The MAMLConfig ``metarl train`` would build from these flags (no Ray started)."""
    from metarl.apps import flags as cli

    parsed = cli.add_arguments(argparse.ArgumentParser()).parse_args(flags)
    parsed.num_env_runners = parsed.num_learners = 0  # the layout does not change the numbers read here
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the preset's line is printed by the run itself
        return cli.config_from_args(parsed)


def eval_flags(variant: tuple) -> tuple[str, ...]:
    """A variant's own flags of ``metarl evaluate`` (an optional 5th entry of its row; default none)."""
    return tuple(variant[4]) if len(variant) > 4 else ()


def plan_run(args, name: str, seed: int) -> dict:
    """The command of one (variant, seed) and its iteration count for the env-step budget."""
    flags = ["--task", args.task, *shlex.split(args.base_args), *args.by_name[name][3], *shlex.split(args.train_args)]
    cfg = train_config(flags)
    horizon = cfg.horizon or tasks.horizon(cfg.task)
    per_iter = cfg.meta_batch_size * cfg.episodes_per_task * (cfg.inner_steps + 1) * horizon
    iterations = max(1, math.ceil(args.budget / per_iter))
    out = str(Path(args.root) / name / f"seed{seed}")
    cmd = [sys.executable, "-m", "metarl.train", *flags, "--seed", str(seed), "--out", out,
           "--iterations", str(iterations), "--checkpoint-every", str(max(1, iterations // 10))]
    heldout = str(Path(out) / f"heldout_{iterations}.json")
    eval_cmd = [sys.executable, "-m", "metarl", "evaluate", "--checkpoint", out, "--adapt-steps", "1",
                "--episodes", str(args.eval_episodes), "--num-tasks", str(args.eval_tasks), "--out", heldout,
                *eval_flags(args.by_name[name])]
    return {"out": out, "iterations": iterations, "env_steps_per_iteration": per_iter, "cmd": cmd,
            "eval_cmd": eval_cmd, "heldout": heldout}


def read_run(out: str) -> dict | None:
    """Iterations done and training env steps of a run folder (None: no results yet)."""
    path = Path(out) / "results.json"
    records = json.loads(path.read_text(encoding="utf-8"))["records"] if path.exists() else []
    if not records:
        return None
    return {"iterations": int(records[-1]["iteration"]), "env_steps": int(records[-1].get("env_steps/lifetime", 0))}


def read_heldout(path: str) -> dict:
    """Per held-out task, the mean return before and after one inner step (``metarl evaluate``'s JSON); with
    trial memory also the return of episode j within each phase (``return_per_episode`` per step)."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    per_task = result["per_task"]
    out = {"task_returns_step_0": [sum(t["returns"][0]) / len(t["returns"][0]) for t in per_task],
           "task_returns": [sum(t["returns"][1]) / len(t["returns"][1]) for t in per_task]}
    if any("return_per_episode" in s for s in result.get("steps", [])):
        out["return_per_episode"] = [s.get("return_per_episode") for s in result["steps"]]
    return out


def _timed(cmd: list[str]) -> float:
    print("$", shlex.join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    return time.monotonic() - t0


def _locked(plan: dict) -> bool:
    """Whether another live process trains this run now (its folder's lock); says so when it does."""
    if not RunLock(Path(plan["out"])).in_use():
        return False
    print(f"skipped {plan['out']}: another process is training it (run this script again once it is done)",
          flush=True)
    return True


def run_one(plan: dict, entry: dict) -> dict:
    """Train (or continue) one run to its last iteration, then evaluate it on the held-out tasks once; ``entry``
    is its record in the JSON (returned updated)."""
    got = read_run(plan["out"])
    wall = entry.get("wall_s", 0.0)
    unfinished = got is None or got["iterations"] < plan["iterations"]
    if unfinished and _locked(plan):
        return entry
    if unfinished:
        try:
            wall += _timed(plan["cmd"] + (["--resume"] if got is not None else []))
        except subprocess.CalledProcessError:
            if _locked(plan):  # another process took the run between the check above and this one's start
                return entry
            raise
        got = read_run(plan["out"])
    if not Path(plan["heldout"]).exists():
        wall += _timed(plan["eval_cmd"])
    return {**entry, **got, **read_heldout(plan["heldout"]), "wall_s": wall, "done": True}


def done_table(runs: dict) -> list[list[float]]:
    """Held-out return after one step of each finished seed, per task: the (seeds, tasks) table."""
    return [r["task_returns"] for r in runs.values() if r.get("done") and r.get("task_returns")]


def summarize(name: str, runs: dict, by_name: dict | None = None) -> dict:
    """Held-out return after one step over seeds x tasks: mean and 95% two-level bootstrap interval."""
    variant = (BY_NAME if by_name is None else by_name)[name]
    table = done_table(runs)
    row = {"knob": variant[1], "value": variant[2], "seeds_done": len(table),
           "env_steps": max((r.get("env_steps", 0) for r in runs.values()), default=0),
           "wall_s": sum(r.get("wall_s", 0.0) for r in runs.values())}
    if table and len({len(t) for t in table}) == 1:
        iv = interval(table)
        row.update(mean=iv.mean, low=iv.low, high=iv.high)
    return row


def add_differences(summary: dict, all_runs: dict, reference: str) -> None:
    """Each variant's mean minus ``reference``'s, with the 95% interval of that difference (two-level bootstrap,
    the two trainings resampled independently: ``metarl.apps.stats.difference``), into its summary row."""
    base = done_table(all_runs.get(reference, {}))
    for name, row in summary.items():
        table = done_table(all_runs[name])
        if name == reference or "mean" not in row or not base or len({len(t) for t in table + base}) != 1:
            continue
        d = difference(table, base)
        row.update(reference=reference, delta=d.mean, delta_low=d.low, delta_high=d.high)


def markdown(summary: dict) -> str:
    """The table: per variant its held-out return, and its difference to the reference variant (beyond noise in
    bold: the interval excludes 0)."""
    ref = next((r["reference"] for r in summary.values() if "reference" in r), None)
    lines = ["| variant | knob | value | held-out return after 1 step (95% interval) | "
             + (f"difference to {ref} (95% interval) | " if ref else "") + "seeds | env steps/seed | wall |",
             "|---|---|---|---|" + ("---|" if ref else "") + "---:|---:|---:|"]
    for name, r in summary.items():
        ret = f"{r['mean']:.1f} [{r['low']:.1f}, {r['high']:.1f}]" if "mean" in r else "—"
        delta = f"{_delta_cell(r)} | " if ref else ""
        lines.append(f"| {name} | {r['knob']} | {r['value']} | {ret} | {delta}{r['seeds_done']} | "
                     f"{r['env_steps']:,} | {r['wall_s'] / 3600:.2f} h |")
    return "\n".join(lines)


def _delta_cell(row: dict) -> str:
    """The difference to the reference with its interval; bold when the interval excludes 0."""
    if "delta" not in row:
        return "—"
    cell = f"{row['delta']:+.1f} [{row['delta_low']:+.1f}, {row['delta_high']:+.1f}]"
    return f"**{cell}**" if row["delta_low"] > 0 or row["delta_high"] < 0 else cell


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save(path: Path, data: dict, by_name: dict) -> None:
    """Write ``data`` with the runs another process (same JSON) wrote since this one read it (its finished entry
    wins over this one's unfinished one), the summary of them all, atomically (a reader never sees half a file)."""
    for name, runs in load(path).get("runs", {}).items():
        for seed, entry in runs.items():
            mine = data["runs"].setdefault(name, {}).setdefault(seed, entry)
            if entry.get("done") and not mine.get("done"):  # a run this one skipped, finished by the other
                data["runs"][name][seed] = entry
    data["summary"] = {n: summarize(n, data["runs"][n], by_name) for n in data["runs"] if n in by_name}
    add_differences(data["summary"], data["runs"], reference=next(iter(by_name)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two may save at once
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None, **table) -> int:
    """Run (or continue) every (variant, seed) of ``parse_args(argv, **table)``; write the JSON after each."""
    args = parse_args(argv, **table)
    path = Path(args.results)
    data = load(path)
    data.update(task=args.task, budget_env_steps=args.budget, eval_tasks=args.eval_tasks,
                eval_episodes=args.eval_episodes, train_args=args.train_args,
                provenance=provenance())  # the latest writer's command, versions, commit, platform and cores
    data.setdefault("runs", {})
    for name in args.names:
        for seed in range(args.seeds):
            plan = plan_run(args, name, seed)
            if args.dry_run:
                print(f"{name} seed {seed}: {plan['iterations']} iterations x {plan['env_steps_per_iteration']:,} "
                      f"env steps\n  {shlex.join(plan['cmd'])}\n  {shlex.join(plan['eval_cmd'])}")
                continue
            runs = data["runs"].setdefault(name, {})
            shown = {k: shlex.join(["python", *plan[k][1:]]) for k in ("cmd", "eval_cmd")}  # no machine's path
            runs[str(seed)] = run_one(plan, {**runs.get(str(seed), {}), **shown})
            save(path, data, args.by_name)  # after every run: resumable
    if not args.dry_run:
        print(markdown({n: data["summary"][n] for n in args.names if n in data["summary"]}))
    return 0


def run_and_load(argv: list[str] | None = None, **table) -> tuple[int, argparse.Namespace, dict | None]:
    """``main(argv, **table)``, then (its exit code, its flags, the JSON it wrote; None on a dry run or when
    nothing was written): for the benchmarks built on this one."""
    code = main(argv, **table)
    args = parse_args(argv, **table)
    results = Path(args.results)
    data = None if args.dry_run or not results.exists() else json.loads(results.read_text(encoding="utf-8"))
    return code, args, data


if __name__ == "__main__":
    sys.exit(main())
