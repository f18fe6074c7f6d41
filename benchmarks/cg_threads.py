"""CG with a PyAMG cycle at torch's default threads; see unrollsci/bench/cg_threads.py."""

import sys

from unrollsci._io import run_command
from unrollsci.bench.cg_threads import main

if __name__ == "__main__":
    raise SystemExit(run_command(main, sys.argv[1:]))
