"""256^2 image deblurring benchmark (issue 20): UnrolledAnalysisFISTA vs FISTA-1000.

Usage: python benchmarks/deblur.py [--quick] [--train-seconds S] [--layers K]
       [--precond-size P] [--train-size N]
Writes results/deblur.{json,md,png}.
"""

import sys

from unrollsci._io import run_command
from unrollsci.bench.deblur import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
