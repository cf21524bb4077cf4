"""``metarl train`` / ``python -m metarl.train``: meta-train with MAML on RLlib (the flags of run_mujoco.py).

The entry point of a cluster job::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m metarl.train --task halfcheetah-dir --iterations 200 --num-env-runners 8 --out s3://bucket/run1

Inside a job ``RAY_ADDRESS`` is set and the run joins that cluster (bare ``ray.init()``); elsewhere it starts an
embedded Ray. ``--out`` is a folder (shared file system) or a URI understood by ``pyarrow.fs`` (``s3://``,
``gs://``, ``file://``): the run is written locally and uploaded after each checkpoint. ``--resume`` continues it.
Ray and ``rllib_ext`` are imported inside the functions only (``metarl`` stays importable without Ray).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from metarl.apps.flags import add_arguments as add  # no Ray import at module level

    return add(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``metarl.apps.run_loop.run``; a bad flag prints its message and returns 2 (nothing written)."""
    from metarl.apps.run_loop import run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except ValueError as e:
        if getattr(args, "debug", False):
            raise
        print(f"metarl train: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("out", "completed", "checkpoint") if k in summary}))
    return 0


def entry() -> int:
    """``python -m metarl.train``: parse ``sys.argv`` and run."""
    parser = argparse.ArgumentParser(prog="python -m metarl.train", description=__doc__.splitlines()[0])
    return main(add_arguments(parser).parse_args())


if __name__ == "__main__":
    sys.exit(entry())
