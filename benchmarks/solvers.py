"""Classical solvers benchmark: see unrollsci/bench/solvers.py (``unrollsci bench solvers``)."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.solvers import main

if __name__ == "__main__":
    sys.exit(run_command(main))
