"""PME vs explicit Ewald in QEq: ``python benchmarks/qeq_pme.py [--quick]`` (see
unrollsci.bench.qeq_pme)."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.qeq_pme import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
