"""LISTA benchmark (thin wrapper): ``python benchmarks/lista.py [--quick]``."""

import sys

from unrollsci.bench.lista import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
