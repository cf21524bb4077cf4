"""`python -m metarl <command>` == the `metarl` console script (application layer; see ``metarl.apps.cli``)."""

import sys

from metarl.apps.cli import main

sys.exit(main())
