from unrollsci.bench.graph_seeds import main

if __name__ == "__main__":
    raise SystemExit(main())
