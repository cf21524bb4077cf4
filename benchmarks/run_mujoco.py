"""MAML on a MuJoCo task with RLlib on an embedded Ray: the job `make run` starts.

How to run::

    make run                                                   # = .venv/bin/python benchmarks/run_mujoco.py
    .venv/bin/python benchmarks/run_mujoco.py --out runs/hc --iterations 12
    .venv/bin/python benchmarks/run_mujoco.py --out runs/hc --iterations 40 --resume   # 40 in TOTAL
    make run RUN_ARGS="--task ant-dir --backbone ssm --iterations 100 --num-env-runners 4 --out runs/ant"

Defaults: halfcheetah-dir (the two-direction task, horizon 100), GRU width 32, meta-batch 4 tasks x 4 episodes
(4 sub-envs, one EnvRunner = the driver), one inner VPG step (α 0.1), second-order meta-gradient, 5 Adam steps,
10 iterations = 32,000 env steps, checkpoints at 5 and 10. Outputs in ``--out`` (default ``runs/mujoco``):
results.json, progress.csv, tb/, adaptation.png, checkpoints/ (see ``rllib_ext/training.py`` for the glossary).
A second ``make run`` into the same folder stops with an error: pass ``--resume`` (with a larger ``--iterations``)
or another ``--out``.

Results to expect (measured 2026-11-25 on the 2-core dev VM WHILE other jobs shared it, load average 8-10, this
job got 58% of one core): 10 iterations in 8 min 59 s wall (build + Ray start ~10 s); 18-92 s per iteration,
of which the meta-update (second-order through the GRU over 100 steps) is 79% and sampling 21%; 35-176 env
steps/s end to end. With only one other job on the machine (2026-11-26, `make run` from a clean clone): 3.0-3.3 s
per iteration, so the default run takes about 45 s plus the install. Per iteration the progress line prints the mean return before (θ) and after one inner step (θ_1), e.g. the
last two: before -39.6 / after -17.3 and before -31.6 / after -11.3; over the 10 iterations the gain after - before
averaged +5.6 but swung from -6.4 to +22.3 from one iteration to the next. What 10 minutes cannot show: learning.
With 4 tasks x 4 episodes per iteration the returns are noise-dominated (std over tasks ~10), and MAML on
HalfCheetah needs hundreds of iterations of 40 tasks x 20 episodes (Finn et al. 2017) to separate the adapted from
the unadapted policy. ``metarl evaluate --checkpoint runs/mujoco --adapt-steps 1 --episodes 4 --num-tasks 4`` on
that checkpoint (20 s) printed -19.2 ± 7.2 before and -16.7 ± 2.0 after one step: within noise. This run checks
the pipeline (sampling, adaptation, meta-gradient, checkpoints, resume), not the method's benefit.

How to debug in-process: ``--num-env-runners 0 --num-learners 0`` (the defaults) runs sampling, the inner
step and the meta-update in this process, so ``breakpoint()`` in ``rllib_ext/runner.py`` (``run_task``) or
``rllib_ext/learner.py`` (``meta_gradient``) stops here; add ``--meta-batch-size 2 --episodes-per-task 4
--horizon 20`` for a run of seconds. Flags and outputs: ``rllib_ext/training.py`` (also ``metarl train``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rllib_ext.training import add_arguments, run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
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
