"""Batched sparse products on the CPU; see unrollsci/bench/spmm.py."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.spmm import main

if __name__ == "__main__":
    raise SystemExit(run_command(main, sys.argv[1:]))
