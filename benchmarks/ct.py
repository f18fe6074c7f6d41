"""CT reconstruction benchmark: FBP vs TV vs unrolled network (writes results/ct.json).

Usage: python benchmarks/ct.py [--quick] [--train-seconds 1200] [--variants free lip10]
"""

import sys

from unrollsci._io import run_command
from unrollsci.bench.ct import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
