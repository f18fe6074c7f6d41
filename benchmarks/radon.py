"""Radon projector speed benchmark (writes results/radon.json).

Usage: python benchmarks/radon.py [--quick]
"""

import sys

from unrollsci._io import run_command
from unrollsci.bench.radon import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
