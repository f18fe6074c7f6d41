"""CG with a PyAMG cycle at torch's default threads; see unrollsci/bench/cg_threads.py."""

import sys

from unrollsci.bench.cg_threads import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
