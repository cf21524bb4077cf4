"""MAML on a MuJoCo task with RLlib on an embedded Ray: the job `make run` starts.

How to run::

    make run                                                   # = .venv/bin/python benchmarks/run_mujoco.py
    .venv/bin/python benchmarks/run_mujoco.py --out runs/hc --iterations 12
    .venv/bin/python benchmarks/run_mujoco.py --out runs/hc --iterations 40 --resume   # 40 in TOTAL
    make run RUN_ARGS="--task ant-dir --backbone ssm --iterations 100 --num-env-runners 4 --out runs/ant"

Defaults: halfcheetah-dir (the two-direction task, horizon 100), an MLP policy of width 64 (``--backbone gru|lstm|
ssm|lru|transformer`` for the sequence models: slower per iteration, see BENCHMARKS.md), meta-batch 20 tasks x 10
episodes (10 sub-envs per runner), one inner VPG step (α 0.1), a first-order meta-gradient for the first 9 M env steps
(``--preset auto``: the MuJoCo preset, so all of the default run; ``--preset default`` for the table's second order), 5 Adam steps, 60 iterations = 2.4 M env steps,
checkpoints every 20. Outputs in ``--out`` (default ``runs/mujoco``):
results.json, progress.csv, tb/, adaptation.png, checkpoints/ (glossary: ``metarl/apps/records.py``).
Actors: ``--num-env-runners auto --num-learners auto`` (the defaults here; ``metarl train`` defaults to 0 and 0)
use every core this process may run on (``metarl/apps/layout.py``: on 2 cores, 2 EnvRunners and 2 Learners); the
first line printed names the layout, the next what the preset set.
A second ``make run`` into the same folder stops with an error: pass ``--resume`` (with a larger ``--iterations``)
or another ``--out``.

Results to expect (measured 2026-11-26 on the 2-core dev VM while the test suite ran on the same cores, with the
second-order meta-gradient of ``--preset default``, before the MuJoCo preset existed): 5 min 46 s
wall, 3.3-4.1 s per iteration (~11,000 env steps/s sampling), 610 MB peak memory. Mean return over the meta-batch,
before adaptation (θ) and after one inner step (θ_1), averaged over 10 iterations:

    iterations  1-10: before -15.7, after -14.2      iterations 41-50: before -17.5, after 10.2
    iterations 21-30: before -16.2, after  -9.3      iterations 51-60: before -16.6, after 19.2

``metarl evaluate --checkpoint runs/mujoco --adapt-steps 1 --episodes 10 --num-tasks 4`` then printed -18.3 ± 16.7
before and 15.3 ± 15.1 after one step (sem over the 4 held-out tasks). So 10 minutes shows adaptation starting to
work: θ itself stays near -17 while one gradient step on 10 episodes turns it towards the task's direction. What
10 minutes cannot show: the level the literature reports (≈ 260 after one step with 24-211 M env steps; this run
has 2.4 M), nor recurrent or state-space policies learning (their second-order meta-update through 100-step
episodes makes each iteration 2-5x slower). BENCHMARKS.md has a 12 M-step run of the same command (300 iterations,
after-adaptation ≈ 90 on the meta-batch, 114 on held-out tasks).

How to debug in-process: ``--num-env-runners 0 --num-learners 0`` runs sampling, the inner
step and the meta-update in this process, so ``breakpoint()`` in ``rllib_ext/runner.py`` (``run_task``) or
``rllib_ext/learner.py`` (``meta_gradient``) stops here; add ``--meta-batch-size 2 --episodes-per-task 4
--horizon 20`` for a run of seconds. Flags: ``metarl/apps/flags.py`` (also ``metarl train``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from metarl.apps.flags import add_arguments, resolve_layout  # noqa: E402
from metarl.apps.run_loop import run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.set_defaults(num_env_runners="auto", num_learners="auto")  # every core this machine gives the run
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        preset = []
        resolve_layout(args, echo=preset.append)
        if args.layout is not None:  # the first line: the layout picked
            print(args.layout.describe(), flush=True)
        for line in preset:
            print(line, flush=True)
        summary = run(args)
    except ValueError as e:
        parser.error(str(e))  # SystemExit(2) with the message; nothing was written
    last = summary["last"] or {}
    print(
        f"done: {summary['completed']} iterations in {summary['out']}; last return before "
        f"{last.get('adapt/return_step_0', float('nan')):.2f} after {last.get('adapt/return_post', float('nan')):.2f};"
        f" checkpoint {summary['checkpoint']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
