"""QEq performance vs LAMMPS: ``python benchmarks/qeq.py [--quick]`` (see unrollsci.chem._bench)."""

import sys

from unrollsci.chem._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
