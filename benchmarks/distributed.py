"""Data-parallel training (torch.distributed) throughput and bf16 CT training benchmark
(writes results/distributed.json and .md).

Usage: python benchmarks/distributed.py [--quick] [--device cuda]
"""

import sys

from unrollsci._io import run_command
from unrollsci.bench.distributed import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
