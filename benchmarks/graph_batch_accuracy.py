from unrollsci.bench.graph_accuracy import main

if __name__ == "__main__":
    raise SystemExit(main())
