"""HalfCheetahDir (H=100) to >= 30 M env steps with held-out evaluation every 25 iterations, against the anchors.

Run (resumable; 2 seeds x 750 iterations of 40,000 env steps; about an hour per seed on one idle core)::

    .venv/bin/python benchmarks/hcdir_long.py                          # the MuJoCo default (switch-9M)
    .venv/bin/python benchmarks/hcdir_long.py --variants first-order   # first order throughout
    .venv/bin/python benchmarks/hcdir_long.py --variants paper         # the published configuration (--preset paper)
    .venv/bin/python benchmarks/hcdir_long.py --dry-run                # the plan and the commands

Every (variant, seed) is one ``python -m metarl.train`` run (``--eval-every 25``: the trial adapts its θ on both
held-out directions, 20 episodes each, every 25 iterations and at the last), then ``metarl evaluate`` at the end;
the machinery (plan, resume, bootstrap interval) is ``benchmarks/ablate_hcdir.py``'s. Writes
``docs/results/hcdir_long.json`` (runs, summary, and per seed the env steps at which the held-out return after one
step first reached each level of ``LEVELS``) and ``docs/results/hcdir_long_curve.png`` (held-out return after
one step vs env steps, per seed and mean, with the published anchors of ``ANCHORS``); prints both tables.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablate = _load("ablate_hcdir")
bench = _load("trial_memory_bench")  # curve(): (env steps, held-out return after one step) of a run

#: (name, knob, value, flags) on top of --train-args
VARIANTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("switch-9M", "first_order_until", "9 M (the MuJoCo default, --preset auto)", ("--first-order-until", "9000000")),
    ("first-order", "first_order", "True throughout (the MuJoCo default until 2026-12-02)", ("--first-order",)),
    ("paper", "preset", "paper", ("--preset", "paper")),
)
BY_NAME = {v[0]: v for v in VARIANTS}
#: held-out return after one step whose first crossing is reported (issue: ≈ 150 and the plateau ≈ 260)
LEVELS = (150.0, 260.0)
#: published HalfCheetahDir returns after one step: (label, env steps, return) — BENCHMARKS.md's anchors
ANCHORS = (
    ("learn2learn MAML-TRPO", 24e6, 150.0),
    ("learn2learn MAML-TRPO", 48e6, 260.0),
    ("RLlib MAML (2020)", 17.5e6, -30.0),
    ("RLlib MAML (2020)", 40e6, 220.0),
)


def defaults() -> dict:
    return {"variants": "switch-9M", "budget": 30_000_000, "root": "runs/hcdir-long",
            "results": "docs/results/hcdir_long.json",
            "train_args": "--num-env-runners 0 --eval-every 25 --eval-tasks 2 --eval-episodes 20",
            "base_args": ""}  # `--preset auto`: the MuJoCo default


def first_crossing(steps: list[float], returns: list[float], level: float) -> float | None:
    """Env steps of the first evaluation whose return is >= ``level`` (None: never)."""
    return next((s for s, r in zip(steps, returns) if r >= level), None)


def crossings(data: dict, root: str) -> dict:
    """{variant: {seed: {level: env steps or None}}} from each run's evaluations inside training."""
    out = {}
    for name, runs in data["runs"].items():
        out[name] = {}
        for seed in runs:
            steps, returns = bench.curve(str(Path(root) / name / f"seed{seed}"))
            out[name][seed] = {str(int(lv)): first_crossing(steps, returns, lv) for lv in LEVELS}
    return out


def crossing_table(table: dict) -> str:
    lines = ["| variant | seed | " + " | ".join(f"first ≥ {int(lv)} (env steps)" for lv in LEVELS) + " |",
             "|---|---:|" + "---:|" * len(LEVELS)]
    for name, seeds in table.items():
        for seed, levels in seeds.items():
            cells = [f"{v:,.0f}" if v is not None else "not reached" for v in levels.values()]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict, root: str, path: Path) -> None:
    """Held-out return after one step vs env steps: each seed thin, the mean over seeds thick (in the variant's
    colour), the anchors as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, runs) in enumerate(data["runs"].items()):
        color = f"C{i}"
        curves = [bench.curve(str(Path(root) / name / f"seed{seed}")) for seed in runs]
        for (x, y), seed, ls in zip(curves, runs, ("-", "--", ":", "-.")):
            ax.plot(np.array(x) / 1e6, y, lw=0.8, alpha=0.6, color=color, ls=ls, label=f"{name}: seed {seed}")
        n = min((len(x) for x, _ in curves), default=0)
        if n > 0 and len(curves) > 1:
            ax.plot(np.array(curves[0][0][:n]) / 1e6, np.mean([y[:n] for _, y in curves], axis=0), lw=2.2,
                    color=color, label=f"{name}: mean of {len(curves)} seeds")
    for label, (color, marker) in zip(dict.fromkeys(a[0] for a in ANCHORS), (("black", "s"), ("grey", "^"))):
        pts = [(s / 1e6, r) for lbl, s, r in ANCHORS if lbl == label]
        ax.plot(*zip(*pts), ls="--", marker=marker, ms=5, color=color, label=f"{label} (published)")
    for level in LEVELS:
        ax.axhline(level, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="training env steps (millions)", ylabel="held-out return after 1 inner step",
           title="HalfCheetahDir, H = 100")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    code, args, data = ablate.run_and_load(argv, by_name=BY_NAME, doc=__doc__, defaults=defaults())
    if data is None:
        return code
    results = Path(args.results)
    data["crossings"] = crossings(data, args.root)
    results.write_text(json.dumps(data, indent=1), encoding="utf-8")
    plot(data, args.root, results.with_name(results.stem + "_curve.png"))
    print(crossing_table(data["crossings"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
