"""The `metarl` command line (also `python -m metarl`).

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``; only the
module of the command being run is imported, so `metarl --help` stays fast and Ray is imported only by the
commands that need it (inside their ``main``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "dynamics": ("metarl.apps.dynamics", "meta-learn a next-observation model across tasks and report adaptation"),
    "train": ("metarl.apps.train", "meta-train a policy with MAML on RLlib (same flags as benchmarks/run_mujoco.py)"),
    "evaluate": ("metarl.apps.evaluate", "adapt a trained policy on held-out test tasks and report return per step"),
    "sweep": ("metarl.apps.sweep", "compare backbones x tasks x seeds with a Ray Tune sweep"),
    "report": ("metarl.apps.report", "turn a sweep folder into report.md and plots"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        known = ", ".join(COMMANDS)
        print(f"metarl: unknown command {command!r}; known commands: {known}", file=sys.stderr)
        return 2
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
