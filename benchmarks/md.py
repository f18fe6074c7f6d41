"""NVE drift, implicit vs envelope QEq forces: ``python benchmarks/md.py [--quick]``."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.md import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
