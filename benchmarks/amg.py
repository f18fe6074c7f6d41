"""Learned AMG vs MIC(0), Chebyshev, PyAMG SA and RS; see unrollsci/bench/amg.py."""

import sys

from unrollsci.bench.amg import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
