"""Run the tests marked `cluster` one pytest process each (they start/stop Ray clusters with `ray start`).

Exit code 5 ("no tests collected") from a file without cluster tests is fine; a run where NO file
collected a cluster test is fine too (none exist yet is not a failure of the others), but any failure fails.
"""

import pathlib
import subprocess
import sys


def main() -> int:
    here = pathlib.Path(__file__).parent
    files = sorted(p for p in here.glob("test_*.py") if "pytest.mark.cluster" in p.read_text())
    rc = 0
    for f in files:
        r = subprocess.call([sys.executable, "-m", "pytest", "-m", "cluster", str(f), *sys.argv[1:]])
        if r not in (0, 5):
            rc = r
    return rc


if __name__ == "__main__":
    sys.exit(main())
