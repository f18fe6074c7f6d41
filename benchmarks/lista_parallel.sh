#!/usr/bin/env bash
# Run the LISTA benchmark as seven single-threaded processes in parallel (ALISTA;
# LISTA-CPSS; supervised LISTA; the other models; LAMP-BG; the unsupervised KKT-loss
# LISTA with lam=0.1 and with lam=0.2, both on LISTA's budget),
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
run lista LISTA --no-kkt
run others LISTA-CP UnrolledFISTA ADMM-Net LAMP
run lampbg LAMP-BG
# the KKT-loss LISTA (noiseless, no ground truth) with the benchmark's lam (0.1, the default
# lam_kkt) and with 0.2 (the best of lam in {0.03, 0.05, 0.1, 0.15, 0.2} in 1-epoch-per-stage
# trials, but worse than 0.1 at the full budget)
kkt() {  # name, lam
  OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --kkt-only --models LISTA --snr inf \
    --lam-kkt "$2" --out "$PARTS" --name "lista_$1" > "$PARTS/log_$1.txt" 2>&1 &
}
kkt kkt01 0.1
kkt kkt02 0.2
wait
python benchmarks/lista.py --out "$OUT" --name lista --merge "$PARTS"/lista_*.json
