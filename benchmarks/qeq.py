"""QEq performance vs LAMMPS: ``python benchmarks/qeq.py [--quick]`` (see unrollsci.bench.qeq)."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.qeq import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
