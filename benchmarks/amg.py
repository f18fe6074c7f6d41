"""Learned AMG vs MIC(0), Chebyshev, PyAMG SA and RS; see unrollsci/bench/amg.py."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.amg import main

if __name__ == "__main__":
    raise SystemExit(run_command(main, sys.argv[1:]))
