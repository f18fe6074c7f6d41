"""Data-parallel training (torch.distributed) throughput and bf16 CT training benchmark
(writes results/distributed.json and .md).

Usage: python benchmarks/distributed.py [--quick] [--device cuda]
"""

import sys

from unrollsci.bench.distributed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
