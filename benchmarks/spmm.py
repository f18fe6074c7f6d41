"""Batched sparse products on the CPU; see unrollsci/bench/spmm.py."""

import sys

from unrollsci.bench.spmm import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
