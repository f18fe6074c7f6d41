"""Graph signal inversion benchmark: see unrollsci/graph/_bench.py (``--quick`` for a short run)."""

import sys

from unrollsci.graph._bench import main

if __name__ == "__main__":
    sys.exit(main())
