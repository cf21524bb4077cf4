"""The `metarl` command line (also `python -m metarl`).

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``; only the
module of the command being run is imported, so `metarl --help` stays fast and Ray is imported only by the
commands that need it (inside their ``main``).

Errors: like argparse, one line on stderr and exit status 2 for bad input (``ValueError``, ``OSError``, ...: a flag,
a file, a checkpoint); 1 for a failure of the run itself (e.g. non-finite results); 130 after Ctrl-C. ``--debug``
(anywhere on the command line) shows the traceback instead.
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
    "report": ("metarl.apps.report", "turn a sweep folder into report.md, plots and results.json"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


#: exceptions that mean "bad input" (exit 2, like argparse); anything else is a failed run (exit 1)
INPUT_ERRORS = (ValueError, OSError, LookupError, TypeError)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        known = ", ".join(COMMANDS)
        print(f"metarl: unknown command {command!r}; known commands: {known}", file=sys.stderr)
        return 2
    parser = build_parser(command)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors (anywhere on the line)")
    args = parser.parse_args(argv)
    args.debug = debug
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except KeyboardInterrupt:
        print(f"metarl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        code = 2 if isinstance(e, INPUT_ERRORS) else 1
        hint = "" if code == 2 else " (rerun with --debug for the traceback)"
        print(f"metarl {args.command}: error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
