#!/usr/bin/env bash
# Run the LISTA benchmark as six single-threaded processes in parallel (ALISTA;
# LISTA-CPSS; LISTA + its unsupervised KKT twin; the other models; LAMP-BG; KKT with lam=0.1),
# then merge into
# benchmarks/results/lista.json. Each process trains on ONE thread (OMP_NUM_THREADS=1):
# the summed "train cpu s" column is the single-core training cost, independent of
# how busy the machine was; "train s" is wall time.
# Usage: benchmarks/lista_parallel.sh [outdir]
set -u
OUT=${1:-benchmarks/results}
PARTS=$OUT/lista_parts
mkdir -p "$PARTS"
run() {  # name, models...
  local name=$1; shift
  OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --models "$@" \
    --out "$PARTS" --name "lista_$name" > "$PARTS/log_$name.txt" 2>&1 &
}
run alista ALISTA
run cpss LISTA-CPSS
run lista LISTA
run others LISTA-CP UnrolledFISTA ADMM-Net LAMP
run lampbg LAMP-BG
# the KKT-loss LISTA again with the benchmark's lam (0.1); the default lam_kkt = 0.003
# run above is kept to show how a small lam blinds the KKT loss to sparsity
OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --kkt-only --models LISTA --snr inf \
  --lam-kkt 0.1 --out "$PARTS" --name lista_kkt01 > "$PARTS/log_kkt01.txt" 2>&1 &
wait
python benchmarks/lista.py --out "$OUT" --name lista --merge "$PARTS"/lista_*.json
