from unrollsci.bench.graph_lip import main

if __name__ == "__main__":
    raise SystemExit(main())
