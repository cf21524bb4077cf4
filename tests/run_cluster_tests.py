"""Run the tests marked `cluster` one pytest process per file (they start and stop Ray clusters of their own).

A file is selected because its text holds ``pytest.mark.cluster``. Such a file must collect at least one test
under ``-m cluster``: pytest's exit code 5 ("no tests collected") there means a marker typo or a mark that no
longer reaches its tests, and fails the run. Only when the extra arguments deselect tests themselves (``-k``,
``--deselect``, ``--lf``) is 5 accepted. Finding no such file at all fails too.
"""

import pathlib
import subprocess
import sys

MARK = "pytest.mark.cluster"
NO_TESTS_COLLECTED = 5
DESELECTING = ("-k", "--deselect", "--lf", "--last-failed")


def selected_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.glob("test_*.py") if MARK in p.read_text())


def main(argv: list[str]) -> int:
    files = selected_files(pathlib.Path(__file__).parent)
    if not files:
        print(f"run_cluster_tests: no tests/test_*.py holds {MARK}", file=sys.stderr)
        return 1
    deselecting = any(a == opt or a.startswith(opt + "=") for a in argv for opt in DESELECTING)
    rc = 0
    for f in files:
        r = subprocess.call([sys.executable, "-m", "pytest", "-m", "cluster", str(f), *argv])
        if r == NO_TESTS_COLLECTED and not deselecting:
            print(f"run_cluster_tests: {f.name} holds {MARK} but collected no test under -m cluster "
                  f"(pytest exit {r}): a misspelt or misplaced marker?", file=sys.stderr)
            rc = rc or r
        elif r not in (0, NO_TESTS_COLLECTED):
            rc = r
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
