"""Learned preconditioners vs none / Jacobi / IC(0) / AMG; see unrollsci/precond/_bench.py."""

import sys

from unrollsci.precond._bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
