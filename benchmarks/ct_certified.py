"""Certified CT benchmark: FBP vs TV vs ConvexRidgeCT (writes results/ct_certified.json + .md).

Usage: python benchmarks/ct_certified.py [--quick] [--force] [--train-steps N] [--checkpoint F]
"""

import sys

from unrollsci._io import run_command
from unrollsci.bench.ct_certified import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
