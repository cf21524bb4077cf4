"""Trial memory at equal env steps: gradient-only MAML, MAML + trial memory, RL² and multitask, held out.

Run (resumable; each (variant, seed) is a ``metarl train`` run, then ``metarl evaluate`` on held-out tasks)::

    .venv/bin/python benchmarks/trial_memory_bench.py --task navigation-2d --budget 5000000
    .venv/bin/python benchmarks/trial_memory_bench.py --task halfcheetah-dir --budget 10000000 --eval-tasks 2
    .venv/bin/python benchmarks/trial_memory_bench.py --task navigation-2d --dry-run   # the plan and commands

Every run: 20 tasks x 20 episodes per phase on 10 sub-envs (2 episodes per sub-env per phase, so trial memory
has episodes to carry its state across), width 64, one inner step for the MAML variants (the task's own default
otherwise, ``--preset auto``: second order on Navigation2D, first order on HalfCheetahDir), the same env-step budget
for every variant (iterations = budget / env steps per iteration: RL² and multitask sample one phase per task,
so they run twice the iterations), 2 seeds, a held-out evaluation every 10 iterations inside the run (the curve)
and ``metarl evaluate`` at the end (before and after one inner step; with trial memory also the return of each
episode within a phase; RL², which adapts in context only, is evaluated with ``--inner-lr 0``: its "after one
step" is the query phase of the same trial, θ unchanged, after the same support episodes as the MAML variants).
Writes ``docs/results/trial_memory_<task>.json``, ``..._curve.png`` (held-out return after one step vs env steps,
mean over seeds) and prints the tables (``phase_table``: per phase and per episode
within each phase). The machinery (plan, resume, bootstrap intervals) is ``benchmarks/ablate_hcdir.py``'s.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("ablate_hcdir", HERE / "ablate_hcdir.py")
ablate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablate)

#: RL² adapts in context only: held out, its "step 1" continues the same trial for the query phase with θ
#: unchanged (``metarl evaluate --inner-lr 0``), i.e. after the same support episodes as the MAML variants
IN_CONTEXT = ("--inner-lr", "0")
#: (name, method, backbone + memory, flags on top of TRAIN_ARGS, flags of ``metarl evaluate``)
VARIANTS: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("maml-mlp", "maml (gradient only)", "mlp", ("--backbone", "mlp"), ()),
    ("maml-gru", "maml (gradient only)", "gru", ("--backbone", "gru"), ()),
    ("maml-trial-gru", "maml + trial memory", "gru", ("--backbone", "gru", "--memory", "trial"), ()),
    ("maml-trial-lru", "maml + trial memory", "lru", ("--backbone", "lru", "--memory", "trial"), ()),
    ("rl2-gru", "rl2 (in context only)", "gru", ("--backbone", "gru", "--memory", "trial", "--inner-steps", "0"),
     IN_CONTEXT),
    ("rl2-lru", "rl2 (in context only)", "lru", ("--backbone", "lru", "--memory", "trial", "--inner-steps", "0"),
     IN_CONTEXT),
    ("multitask-mlp", "multitask (no inner step)", "mlp", ("--backbone", "mlp", "--inner-steps", "0"), ()),
)
BY_NAME = {v[0]: v for v in VARIANTS}
#: every run's shared flags: 2 episodes per sub-env per phase, one process (one core) per run
TRAIN_ARGS = ("--meta-batch-size 20 --episodes-per-task 20 --num-envs-per-runner 10 --width 64 "
              "--num-env-runners 0 --eval-every 10")


def defaults(argv: list[str] | None) -> dict:
    """Root and results named by the task (the task flag read ahead of the full parse)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    task = argv[argv.index("--task") + 1] if "--task" in argv[:-1] else "navigation-2d"
    return {"task": task, "budget": 5_000_000, "eval_tasks": 40, "eval_episodes": 20, "train_args": TRAIN_ARGS,
            "base_args": "",  # the task's own default (`--preset auto`: the MuJoCo default on halfcheetah-dir)
            "root": f"runs/trial-memory/{task}", "results": f"docs/results/trial_memory_{task}.json"}


def curve(out: str, key: str = "eval/return_step_1") -> tuple[list[float], list[float]]:
    """(env steps, held-out ``key``: by default the return after one step) of a run's evaluations in training."""
    path = Path(out) / "results.json"
    records = json.loads(path.read_text(encoding="utf-8"))["records"] if path.exists() else []
    pts = [(r["env_steps/lifetime"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def curve_key(name: str) -> str:
    """The curve's metric: after one step; for RL² (in context only) the trial's first phase, θ unchanged (the
    evaluation inside training takes a gradient step with the config's inner lr, which RL² never trained for)."""
    return "eval/return_step_0" if BY_NAME[name][4] == IN_CONTEXT else "eval/return_step_1"


def plot(data: dict, root: str, path: Path) -> None:
    """Held-out return after one inner step vs training env steps, one line per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, runs in data["runs"].items():
        curves = [curve(str(Path(root) / name / f"seed{seed}"), curve_key(name)) for seed in runs]
        n = min((len(x) for x, _ in curves), default=0)
        phase = " (phase 0, in context)" if curve_key(name).endswith("_0") else ""
        if n:
            ax.plot(curves[0][0][:n], np.mean([y[:n] for _, y in curves], axis=0),
                    label=f"{name}{phase} ({len(curves)} seeds)")
    ax.set(xlabel="training env steps", ylabel="held-out return after 1 step", title=data["task"])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def phase_table(data: dict) -> str:
    """Per variant, mean over seeds x held-out tasks: the return of the first phase (θ) and of the query phase
    (after one step; RL²: θ unchanged, in context), and with trial memory the return of each episode j within
    each phase (what the state carried across episodes adds)."""
    done = {n: [r for r in runs.values() if r.get("done")] for n, runs in data["runs"].items()}
    per_ep = [len(r["return_per_episode"][0]) for rs in done.values() for r in rs if r.get("return_per_episode")]
    q = max(per_ep, default=0)
    head = ["variant", "seeds", "phase 0 (θ)", "query phase (after 1 step)",
            *(f"phase 0, episode {j + 1}" for j in range(q)), *(f"query, episode {j + 1}" for j in range(q))]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, runs in done.items():
        if not runs:
            continue
        cells = [name, str(len(runs)), f"{np.mean([r['task_returns_step_0'] for r in runs]):.1f}",
                 f"{np.mean([r['task_returns'] for r in runs]):.1f}"]
        eps = [r["return_per_episode"] for r in runs if r.get("return_per_episode")]
        cells += [f"{v:.1f}" for v in np.mean(eps, axis=0).ravel()] if eps else ["—"] * (2 * q)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    code, args, data = ablate.run_and_load(argv, by_name=BY_NAME, doc=__doc__, defaults=defaults(argv))
    if data is None:
        return code
    results = Path(args.results)
    plot(data, args.root, results.with_name(results.stem + "_curve.png"))
    print(phase_table(data))
    return code


if __name__ == "__main__":
    sys.exit(main())
