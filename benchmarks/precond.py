"""Learned preconditioners vs none / Jacobi / IC(0) / AMG; see unrollsci/bench/precond.py."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.precond import main

if __name__ == "__main__":
    raise SystemExit(run_command(main, sys.argv[1:]))
