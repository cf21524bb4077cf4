"""`python -m metarl <command>` == the `metarl` console script."""

import sys

from metarl.cli import main

sys.exit(main())
