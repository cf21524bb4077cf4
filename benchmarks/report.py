"""Summarize a sweep folder: ``report.md`` (table per task x backbone x method) and ``plots/*.png``.

How to run (same code as ``metarl report DIR``)::

    metarl sweep --backbones gru,mlp --tasks navigation-2d --seeds 2 --smoke --storage runs/sweeps --name smoke
    python benchmarks/report.py runs/sweeps/smoke

What to expect: ``runs/sweeps/smoke/report.md`` with one row per (task, backbone, method): return before
adaptation and after each inner step, gain, env steps, wall time and parameter count (mean ± std over seeds;
the smoke size gives ~600-parameter policies and a few hundred env steps per trial), plus
``plots/learning_<task>.png`` and ``plots/adaptation_<task>.png``.
Debug in-process: ``python -c "from metarl.apps.report import load_trials; print(load_trials('runs/sweeps/smoke'))"``.
"""

import argparse
import sys

from metarl.apps.report import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks/report.py", description=__doc__.splitlines()[0])
    sys.exit(main(add_arguments(parser).parse_args()))
