"""LISTA benchmark (thin wrapper): ``python benchmarks/lista.py [--quick]``."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.lista import main

if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
