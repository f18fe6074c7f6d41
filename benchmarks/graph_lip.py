from unrollsci._io import run_command
from unrollsci.bench.graph_lip import main

if __name__ == "__main__":
    raise SystemExit(run_command(main))
