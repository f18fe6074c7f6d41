"""Classical solvers benchmark: see unrollsci/solvers/_bench.py (``unrollsci bench solvers``)."""

import sys

from unrollsci.solvers._bench import main

if __name__ == "__main__":
    sys.exit(main())
