"""Structured sparse recovery benchmark (issue 20): group sparsity with diagonal and
block-diagonal learned preconditioners, ADMM-Net with a learned x-update solve.

Usage: python benchmarks/structured.py [--quick] [--only group|admm]
Writes results/structured_group.{json,md,png} and results/structured_admm.{json,md}.
"""

import sys

from unrollsci._io import run_command
from unrollsci.bench.structured import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
