"""Graph signal inversion benchmark: see unrollsci/bench/graph.py (``--quick`` for a short run)."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.graph import main

if __name__ == "__main__":
    sys.exit(run_command(main))
