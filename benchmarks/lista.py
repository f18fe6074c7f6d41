"""LISTA benchmark (thin wrapper): ``python benchmarks/lista.py [--quick]``."""

import sys

from unrollsci.unrolled._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
