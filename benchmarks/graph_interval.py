from unrollsci.bench.graph_interval import main

if __name__ == "__main__":
    raise SystemExit(main())
